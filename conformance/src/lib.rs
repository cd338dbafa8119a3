//! conformance (in progress)
