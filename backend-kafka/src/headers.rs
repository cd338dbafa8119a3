//! Record headers read straight from librdkafka. rdkafka's own accessor panics on a
//! header name that is not UTF-8, which any other Kafka client can write; a consumer
//! must not crash on such a record (nor again on every restart). Names are decoded
//! lossily, and end at a NUL byte (librdkafka gives no name length); a null value
//! reads as empty.

#![allow(
    unsafe_code,
    reason = "three librdkafka calls on a message the caller borrows; rdkafka offers no accessor that does not panic"
)]

use std::ffi::CStr;
use std::ptr;

use rdkafka::bindings as rdsys;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaRespErr;
use tributary_core::{Bytes, Headers};

/// The headers of `message`, in order.
pub(crate) fn headers_of(message: &BorrowedMessage<'_>) -> Headers {
    let mut out = Headers::default();
    let mut native: *mut rdsys::rd_kafka_headers_t = ptr::null_mut();
    // SAFETY: `message.ptr()` is the live rd_kafka_message_t that `message` borrows; the
    // headers it returns belong to the message and live as long as it does.
    let err = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut native) };
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || native.is_null() {
        return out;
    }
    // SAFETY: `native` is the message's non-null header list (above).
    let count = unsafe { rdsys::rd_kafka_header_cnt(native) };
    for index in 0..count {
        let (mut name, mut value, mut size) = (ptr::null(), ptr::null(), 0usize);
        // SAFETY: `index` < `count`; the out-pointers are valid locals.
        let err = unsafe { rdsys::rd_kafka_header_get_all(native, index, &mut name, &mut value, &mut size) };
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka stores header names NUL-terminated; `name` is non-null and
        // lives as long as the message.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        let value = if value.is_null() {
            Bytes::new()
        } else {
            // SAFETY: `value` points at `size` bytes owned by the message.
            Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) })
        };
        out.push(name, value);
    }
    out
}
