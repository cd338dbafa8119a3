//! The same application code on whichever engine `TRIBUTARY_URL` names (default
//! `memory://`): only the URL changes.
//!
//! Run: `TRIBUTARY_URL=memory://?partitions=4 cargo run --example switch_backend`

use std::time::Duration;

use tributary::{Client, Config, ConsumerConfig, ProducerExt, Record, StartFrom, StreamSpec};

#[tokio::main]
async fn main() -> tributary::Result<()> {
    let url = std::env::var("TRIBUTARY_URL").unwrap_or_else(|_| "memory://".to_string());
    let config = Config::from_url(&url)?;
    let engine = config.backend_name();
    let client = Client::connect(config).await?;
    println!("engine: {engine} ({:?})", client.capabilities());

    // A fresh stream per run, so the example can run again against a shared server.
    let stream = format!("switch-backend-{}", std::process::id());
    client
        .ensure_stream(&StreamSpec::new(&stream).with_partitions(2))
        .await?;

    let producer = client.producer().await?;
    let records: Vec<Record> = (0..10)
        .map(|i| Record::new(format!("event {i}")).with_key(format!("device-{}", i % 3)))
        .collect();
    let deliveries = producer.send(&stream, records).await?;
    println!("sent {} records", deliveries.len());
    producer
        .send_one(&stream, Record::new("one more").with_key("device-0"))
        .await?;

    let mut reader = client
        .consumer(ConsumerConfig::broadcast(&stream).start_from(StartFrom::Earliest))
        .await?;
    let mut seen = 0;
    while seen < 11 {
        let batch = reader.poll(100, Duration::from_secs(5)).await?;
        if batch.is_empty() {
            return Err(tributary::Error::new(
                tributary::ErrorKind::Timeout,
                "records did not arrive",
            ));
        }
        seen += batch.len();
    }
    reader.close().await?;
    client.admin().await?.delete_stream(&stream).await?;
    println!("read all {seen} records back");
    Ok(())
}
