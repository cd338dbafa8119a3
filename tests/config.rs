//! Choosing an engine from URLs, TOML and the environment, and the errors for bad ones.

use std::time::Duration;

use tributary::{Config, ErrorKind, MemoryConfig, SchemeSupport, scheme_support};

#[test]
fn memory_url_with_options() {
    let config = Config::from_url("memory://?partitions=4&max_record_bytes=2048&session_timeout=5s").unwrap();
    assert_eq!(
        config,
        Config::Memory(MemoryConfig {
            partitions: 4,
            max_record_bytes: 2048,
            session_timeout: Duration::from_secs(5),
        })
    );
    assert_eq!(
        Config::from_url("memory://").unwrap(),
        Config::Memory(MemoryConfig::default())
    );
    assert_eq!("memory://".parse::<Config>().unwrap().backend_name(), "memory");
}

#[test]
fn unknown_key_lists_the_valid_ones() {
    let err = Config::from_url("memory://?partitons=4").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    let msg = err.to_string();
    for expected in ["partitons", "partitions", "max_record_bytes", "session_timeout"] {
        assert!(msg.contains(expected), "{msg}");
    }
}

#[test]
fn bad_values_are_named() {
    for (url, fragment) in [
        ("memory://?partitions=0", "partitions"),
        ("memory://?partitions=lots", "`partitions`: invalid digit"),
        (
            "memory://?session_timeout=soon",
            "`session_timeout`: invalid value",
        ),
        ("memory://?session_timeout=400days", "at most one day"),
        ("memory://localhost", "no host or path"),
    ] {
        let err = Config::from_url(url).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{url}");
        assert!(err.to_string().contains(fragment), "{url}: {err}");
    }
}

#[test]
fn malformed_and_unknown_urls() {
    let err = Config::from_url("memory").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("scheme://"), "{err}");
    let err = Config::from_url("redis://localhost").unwrap_err();
    assert!(err.to_string().contains("unknown backend \"redis\""), "{err}");
    assert!(
        err.to_string().contains("memory://"),
        "lists what is compiled in: {err}"
    );
}

#[test]
fn known_schemes_not_in_this_build_say_so() {
    for scheme in ["native", "kafka", "kinesis"] {
        let support = scheme_support(scheme).unwrap();
        if support == SchemeSupport::Available {
            continue;
        }
        let err = Config::from_url(&format!("{scheme}://x")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        match support {
            SchemeSupport::FeatureOff(feature) => {
                assert!(err.to_string().contains(&format!("`{feature}` feature")), "{err}")
            }
            other => unreachable!("filtered above: {other:?}"),
        }
    }
    assert_eq!(scheme_support("memory"), Some(SchemeSupport::Available));
    assert_eq!(scheme_support("ftp"), None);
}

#[test]
fn toml_config() {
    let config =
        Config::from_toml_str("backend = \"memory\"\npartitions = 3\nsession_timeout = \"2s\"\n").unwrap();
    let Config::Memory(memory) = config else {
        panic!("memory")
    };
    assert_eq!(memory.partitions, 3);
    assert_eq!(memory.session_timeout, Duration::from_secs(2));

    for (text, fragment) in [
        ("partitions = 3", "no `backend`"),
        ("backend = 3", "must be a string"),
        ("backend = \"memory\"\npartitons = 3", "unknown key `partitons`"),
        ("backend = \"memory\"\npartitions = 0", "partitions"),
        (
            "backend = \"memory\"\npartitions = \"four\"",
            "`partitions`: invalid type",
        ),
        ("backend = \"kafka\"", "kafka"),
        ("backend = [", "invalid TOML"),
    ] {
        let err = Config::from_toml_str(text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{text}");
        assert!(err.to_string().contains(fragment), "{text}: {err}");
    }
}

#[test]
fn config_file_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("tributary-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tributary.toml");
    std::fs::write(&file, "backend = \"memory\"\nbogus = 1\n").unwrap();
    let err = Config::from_file(&file).unwrap_err();
    assert!(err.to_string().contains("tributary.toml"), "{err}");
    assert!(err.to_string().contains("bogus"), "{err}");
    std::fs::write(&file, "backend = \"memory\"\n").unwrap();
    assert_eq!(Config::from_file(&file).unwrap().backend_name(), "memory");
    let err = Config::from_file(dir.join("missing.toml")).unwrap_err();
    assert!(err.to_string().contains("missing.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_serializes_with_its_tag() {
    let text = toml::to_string(&Config::Memory(MemoryConfig::default())).unwrap();
    assert!(text.contains("backend = \"memory\""), "{text}");
    assert_eq!(
        Config::from_toml_str(&text).unwrap(),
        Config::Memory(MemoryConfig::default())
    );
}

#[cfg(feature = "native")]
#[test]
fn native_url_and_toml() {
    use tributary::native::{Durability, NativeConfig};
    let Config::Native(c) =
        Config::from_url("native:///var/lib/app?durability=sync&segment_bytes=1048576").unwrap()
    else {
        panic!("native")
    };
    assert_eq!(c.path, std::path::PathBuf::from("/var/lib/app"));
    assert_eq!(c.durability, Durability::Sync);
    assert_eq!(c.segment_bytes, 1_048_576);
    let Config::Native(c) = Config::from_url("native://relative/dir").unwrap() else {
        panic!("native")
    };
    assert_eq!(c.path, std::path::PathBuf::from("relative/dir"));
    let Config::Native(c) = Config::from_url("native://").unwrap() else {
        panic!("native")
    };
    assert_eq!(c.path, tributary_native::default_dir());
    let err = Config::from_url("native:///x?durability=fast").unwrap_err();
    assert!(
        err.to_string().contains("`durability`: unknown variant `fast`"),
        "{err}"
    );
    let err = Config::from_url("native:///x?path=/y").unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
    let toml = "backend = \"native\"\npath = \"/data\"\ndurability = \"group_commit\"\ngroup_commit_interval = \"5ms\"";
    let Config::Native(c) = Config::from_toml_str(toml).unwrap() else {
        panic!("native")
    };
    assert_eq!(
        c,
        NativeConfig {
            durability: Durability::GroupCommit,
            group_commit_interval: Duration::from_millis(5),
            ..NativeConfig::at("/data")
        }
    );
}

#[cfg(not(feature = "native"))]
#[test]
fn native_feature_off_says_which_feature() {
    let err = Config::from_url("native:///tmp/x").unwrap_err();
    assert!(err.to_string().contains("enable the `native` feature"), "{err}");
}

#[cfg(feature = "kafka")]
#[test]
fn kafka_from_url_and_toml() {
    let Config::Kafka(kafka) = Config::from_url("kafka://b1:9092,b2:9092?linger=1ms").unwrap() else {
        panic!("kafka")
    };
    assert_eq!(kafka.bootstrap, "b1:9092,b2:9092");
    assert_eq!(kafka.linger, Duration::from_millis(1));
    let text = "backend = \"kafka\"\nbootstrap = \"b1:9092\"\ncompression = \"zstd\"\n\
                [librdkafka]\n\"fetch.wait.max.ms\" = \"50\"\n";
    let Config::Kafka(kafka) = Config::from_toml_str(text).unwrap() else {
        panic!("kafka")
    };
    assert_eq!(
        kafka.librdkafka.get("fetch.wait.max.ms").map(String::as_str),
        Some("50")
    );
    let err = Config::from_toml_str(
        "backend = \"kafka\"\nbootstrap = \"b1:9092\"\n[librdkafka]\n\"enable.auto.commit\" = \"true\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("enable.auto.commit"), "{err}");
}

#[cfg(feature = "kinesis")]
#[test]
fn kinesis_from_url_and_toml() {
    let Config::Kinesis(kinesis) =
        Config::from_url("kinesis://?region=eu-west-1&endpoint=http://127.0.0.1:4568&reader=fan_out")
            .unwrap()
    else {
        panic!("kinesis")
    };
    assert_eq!(kinesis.region.as_deref(), Some("eu-west-1"));
    assert_eq!(kinesis.reader, tributary::kinesis::ReaderKind::FanOut);
    let text =
        "backend = \"kinesis\"\nregion = \"us-east-1\"\nheaders_envelope = true\npoll_interval = \"1s\"\n";
    let Config::Kinesis(kinesis) = Config::from_toml_str(text).unwrap() else {
        panic!("kinesis")
    };
    assert!(kinesis.headers_envelope);
    assert_eq!(kinesis.poll_interval, Duration::from_secs(1));
    let err = Config::from_url("kinesis://?region=us-east-1&aws_access_key_id=AKIA").unwrap_err();
    assert!(err.to_string().contains("default AWS chain"), "{err}");
    assert!(!err.to_string().contains("AKIA"), "{err}");
    let err = Config::from_toml_str("backend = \"kinesis\"\nsecret_access_key = \"x\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown"), "{err}");
}

#[test]
fn keep_headers_asks_only_engines_without_native_headers() {
    let mut memory = Config::from_url("memory://").unwrap();
    let before = memory.clone();
    memory.keep_headers();
    assert_eq!(memory, before, "the memory engine keeps headers natively");
    #[cfg(feature = "kinesis")]
    {
        let mut kinesis = Config::from_url("kinesis://?region=us-east-1").unwrap();
        let Config::Kinesis(settings) = &kinesis else {
            panic!("{kinesis:?}")
        };
        assert!(!settings.headers_envelope);
        kinesis.keep_headers();
        let Config::Kinesis(settings) = &kinesis else {
            panic!("{kinesis:?}")
        };
        assert!(settings.headers_envelope, "Kinesis keeps headers in its envelope");
    }
}
