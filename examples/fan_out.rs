//! Fan-out: two consumer groups and a broadcast reader each see every record.
//!
//! Run: `cargo run --example fan_out`

use std::time::Duration;

use tributary::{Client, Consumer, ConsumerConfig, ConsumerExt, Record, StreamSpec};

/// Reads until `n` records arrived, acknowledging them for groups.
async fn read_all(consumer: &mut dyn Consumer, n: usize, group: bool) -> tributary::Result<Vec<String>> {
    let mut values = Vec::new();
    while values.len() < n {
        let batch = consumer.poll(n, Duration::from_secs(5)).await?;
        if batch.is_empty() {
            return Err(tributary::Error::new(
                tributary::ErrorKind::Timeout,
                "records did not arrive",
            ));
        }
        if group {
            consumer.ack_all(&batch)?;
            consumer.commit().await?;
        }
        values.extend(
            batch
                .iter()
                .map(|r| String::from_utf8_lossy(&r.value).into_owned()),
        );
    }
    Ok(values)
}

#[tokio::main]
async fn main() -> tributary::Result<()> {
    let url = std::env::var("TRIBUTARY_URL").unwrap_or_else(|_| "memory://".to_string());
    let client = Client::from_url(&url).await?;
    let stream = format!("fan-out-{}", std::process::id());
    client
        .ensure_stream(&StreamSpec::new(&stream).with_partitions(3))
        .await?;

    let records: Vec<Record> = (0..30)
        .map(|i| Record::new(format!("reading {i}")).with_key(format!("sensor-{}", i % 5)))
        .collect();
    client.producer().await?.send(&stream, records).await?;

    let mut audit = client
        .consumer(ConsumerConfig::group(&stream, format!("{stream}-audit")))
        .await?;
    let mut alerts = client
        .consumer(ConsumerConfig::group(&stream, format!("{stream}-alerts")))
        .await?;
    let mut dashboard = client.consumer(ConsumerConfig::broadcast(&stream)).await?;

    for (name, consumer, group) in [
        ("audit", &mut audit, true),
        ("alerts", &mut alerts, true),
        ("dashboard", &mut dashboard, false),
    ] {
        let mut values = read_all(&mut **consumer, 30, group).await?;
        values.sort();
        values.dedup();
        assert_eq!(values.len(), 30, "{name} sees every record");
        println!("{name}: saw all {} records", values.len());
        consumer.close().await?;
    }
    client.admin().await?.delete_stream(&stream).await?;
    Ok(())
}
