//! Backend URLs: `scheme://target?key=value&...`, and their query as a serde config.

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A backend URL split into its parts. The target is what comes between `://` and
/// `?`: a directory for `native:///var/lib/app`, a broker list for
/// `kafka://h1:9092,h2:9092`, empty for `memory://`. No secret is ever taken from a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendUrl {
    /// The scheme, lower-cased (`memory`, `native`, `kafka`, `kinesis`).
    pub scheme: String,
    /// Everything between `://` and `?`, percent-decoded.
    pub target: String,
    /// The raw query (without `?`), still percent-encoded.
    pub query: String,
}

impl BackendUrl {
    /// Splits `url`.
    ///
    /// # Errors
    /// `InvalidConfig` when `url` has no `scheme://`, a bad scheme, a fragment, or
    /// percent-escapes that are not UTF-8.
    pub fn parse(url: &str) -> Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(Error::invalid_config(format!(
                "{:?} is not a backend URL: expected scheme://..., for example memory:// or kafka://127.0.0.1:9092",
                redact_query(url)
            )));
        };
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return Err(Error::invalid_config(format!(
                "{scheme:?} is not a valid URL scheme (expected memory, native, kafka or kinesis)"
            )));
        }
        if rest.contains('#') {
            return Err(Error::invalid_config(
                "backend URLs take no fragment ('#'); percent-encode '#' as %23",
            ));
        }
        let (target, query) = rest.split_once('?').unwrap_or((rest, ""));
        let target = percent_encoding::percent_decode_str(target)
            .decode_utf8()
            .map_err(|e| Error::invalid_config(format!("the URL's target is not UTF-8 once decoded: {e}")))?
            .into_owned();
        Ok(Self {
            scheme: scheme.to_ascii_lowercase(),
            target,
            query: query.to_string(),
        })
    }

    /// The query's keys, in order (for messages; values may hold secrets).
    pub fn query_keys(&self) -> Vec<String> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&self.query)
            .map(|pairs| pairs.into_iter().map(|(k, _)| k).collect())
            .unwrap_or_default()
    }

    /// Deserializes the query into a backend's config struct. The struct should use
    /// `#[serde(deny_unknown_fields)]`, so that an unknown key is an error listing the
    /// valid ones; values are parsed from text (numbers, booleans, durations like `10s`).
    ///
    /// # Errors
    /// `InvalidConfig` naming the scheme and the bad or unknown key.
    pub fn query_config<T: DeserializeOwned>(&self) -> Result<T> {
        query_config(&self.scheme, &self.query)
    }

    /// Checks that this URL is for the engine of `scheme`.
    ///
    /// # Errors
    /// `InvalidConfig` naming both schemes.
    pub fn expect_scheme(&self, scheme: &str) -> Result<()> {
        if self.scheme == scheme {
            Ok(())
        } else {
            Err(Error::invalid_config(format!(
                "expected a {scheme}:// URL, got {}://",
                self.scheme
            )))
        }
    }

    /// The target, for engines that take one setting (`key`) either as the target or
    /// as a query key: `None` when the target is empty.
    ///
    /// # Errors
    /// `InvalidConfig` when both are given; `what` names the setting in the message.
    pub fn target_as(&self, key: &str, what: &str) -> Result<Option<&str>> {
        if self.target.is_empty() {
            return Ok(None);
        }
        if self.query_keys().iter().any(|k| k == key) {
            return Err(Error::invalid_config(format!(
                "{}:// takes {what} either as the URL's target or as `{key}=`, not both",
                self.scheme
            )));
        }
        Ok(Some(&self.target))
    }
}

/// Deserializes a URL query into `T`; see [`BackendUrl::query_config`].
///
/// # Errors
/// `InvalidConfig` naming the scheme and the bad or unknown key.
pub fn query_config<T: DeserializeOwned>(scheme: &str, query: &str) -> Result<T> {
    let pairs = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(pairs).map_err(|e| {
        let why = describe_config_error(e.path(), &e.inner().to_string());
        Error::invalid_config(format!("invalid option in the {scheme}:// URL: {why}"))
            .with_source(e.into_inner())
    })
}

/// A serde error in people's words, naming the key it is about (serde's own messages
/// for bad values do not).
pub fn describe_config_error(path: &serde_path_to_error::Path, message: &str) -> String {
    let message = message
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key");
    let path = path.to_string();
    if path.is_empty() || path == "." || message.starts_with("unknown key") {
        message
    } else {
        format!("`{path}`: {message}")
    }
}

/// `url` without its query, for messages (query values may hold secrets).
pub fn redact_query(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;
    use crate::ErrorKind;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        #[serde(default)]
        partitions: Option<u32>,
        #[serde(default)]
        fast: bool,
        #[serde(default, with = "humantime_serde")]
        wait: Option<Duration>,
    }

    #[test]
    fn splits_scheme_target_query() {
        let u = BackendUrl::parse("Native:///var/lib/my%20app?durability=sync").unwrap();
        assert_eq!(u.scheme, "native");
        assert_eq!(u.target, "/var/lib/my app");
        assert_eq!(u.query, "durability=sync");
        let k = BackendUrl::parse("kafka://h1:9092,h2:9092").unwrap();
        assert_eq!(k.target, "h1:9092,h2:9092");
        assert_eq!(k.query, "");
    }

    #[test]
    fn typed_values_from_text() {
        let u = BackendUrl::parse("memory://?partitions=4&fast=true&wait=250ms").unwrap();
        let d: Demo = u.query_config().unwrap();
        assert_eq!(
            d,
            Demo {
                partitions: Some(4),
                fast: true,
                wait: Some(Duration::from_millis(250))
            }
        );
    }

    #[test]
    fn unknown_key_lists_valid_keys() {
        let u = BackendUrl::parse("memory://?partitons=4").unwrap();
        let err = u.query_config::<Demo>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        let msg = err.to_string();
        assert!(msg.contains("unknown key `partitons`"), "{msg}");
        assert!(
            msg.contains("`partitions`") && msg.contains("`fast`") && msg.contains("`wait`"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_and_malformed_urls() {
        let u = BackendUrl::parse("memory://?partitions=four").unwrap();
        assert_eq!(
            u.query_config::<Demo>().unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
        for bad in [
            "memory",
            "://x",
            "1abc://x",
            "memory://x#frag",
            "mem ory://",
            "native:///%FF",
        ] {
            let err = BackendUrl::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{bad}");
        }
    }

    #[test]
    fn scheme_and_target_helpers() {
        let u = BackendUrl::parse("kafka://h:9092?bootstrap=x").unwrap();
        assert!(u.expect_scheme("kafka").is_ok());
        let err = u.expect_scheme("native").unwrap_err();
        assert!(
            err.to_string().contains("expected a native:// URL, got kafka://"),
            "{err}"
        );
        let err = u.target_as("bootstrap", "the brokers").unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let u = BackendUrl::parse("kafka://h:9092").unwrap();
        assert_eq!(u.target_as("bootstrap", "the brokers").unwrap(), Some("h:9092"));
        let u = BackendUrl::parse("kafka://?bootstrap=h:9092").unwrap();
        assert_eq!(u.target_as("bootstrap", "the brokers").unwrap(), None);
    }

    #[test]
    fn messages_never_echo_query_values() {
        let err = BackendUrl::parse("nonsense?password=hunter2").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
