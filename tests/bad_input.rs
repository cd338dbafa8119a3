//! Bad input through the facade: each case is a clear error, and nothing already
//! acknowledged is lost.

use std::time::Duration;

use tributary::{
    Client, ConsumerConfig, ConsumerExt, ErrorKind, Offset, PartitionId, ProducerExt, Record, StreamSpec,
};

async fn client_with_stream(stream: &str) -> Client {
    let client = Client::from_url("memory://?partitions=2&max_record_bytes=1024")
        .await
        .expect("a memory client");
    client
        .ensure_stream(&StreamSpec::new(stream))
        .await
        .expect("the stream");
    client
}

#[tokio::test]
async fn malformed_url_and_unknown_key() {
    let err = Client::from_url("memory:/missing-slashes").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("scheme://"), "{err}");
    let err = Client::from_url("memory://?color=blue").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("unknown key `color`"), "{err}");
    assert!(
        err.to_string().contains("partitions"),
        "lists the valid keys: {err}"
    );
}

#[tokio::test]
async fn invalid_stream_name() {
    let client = client_with_stream("ok").await;
    let err = client
        .admin()
        .await
        .unwrap()
        .create_stream(&StreamSpec::new("../../etc"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("'/' is not allowed"), "{err}");
    let err = client
        .consumer(ConsumerConfig::broadcast("no such/stream"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn oversized_record_loses_nothing() {
    let client = client_with_stream("sized").await;
    let producer = client.producer().await.unwrap();
    producer
        .send_one("sized", Record::new("kept").with_key("k"))
        .await
        .unwrap();
    let err = producer
        .send(
            "sized",
            vec![
                Record::new("fine").with_key("k"),
                Record::new(vec![0u8; 2000]).with_key("k"),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("record 1 of the batch is 2001 bytes"),
        "{err}"
    );
    assert_eq!(err.unsent.len(), 2, "the batch is handed back whole");
    let mut reader = client.consumer(ConsumerConfig::broadcast("sized")).await.unwrap();
    let got = reader.poll(10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, "kept");
}

#[tokio::test]
async fn commit_of_partition_not_owned() {
    let client = client_with_stream("owned").await;
    let producer = client.producer().await.unwrap();
    producer
        .send_one("owned", Record::new("a").with_key("k"))
        .await
        .unwrap();
    let mut member = client
        .consumer(ConsumerConfig::group("owned", "g"))
        .await
        .unwrap();
    let got = member.poll(10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(got.len(), 1);
    let err = member.ack(&PartitionId::new("7"), &got[0].offset).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotAssigned);
    assert!(err.to_string().contains("partition 7"), "{err}");
    let err = member.ack(&got[0].partition, &Offset::new(999)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    member.commit_record(&got[0]).await.unwrap();
}
