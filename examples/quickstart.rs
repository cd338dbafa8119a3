//! Produce and consume on the default engine, the embedded native log: create a
//! stream, send keyed records, read them as a consumer group, acknowledge and commit.
//! The data lives in `./tributary-data` (or `$TRIBUTARY_DATA_DIR`): run it again and
//! the group resumes after what it committed the first time.
//!
//! Run: `cargo run --example quickstart`

use std::time::Duration;

use tributary::{Client, ConsumerConfig, ProducerExt, Record, StreamSpec};

#[tokio::main]
async fn main() -> tributary::Result<()> {
    let client = Client::from_url("native://").await?;
    println!(
        "data directory: {}",
        tributary::native::NativeConfig::default().path.display()
    );
    client
        .ensure_stream(&StreamSpec::new("orders").with_partitions(3))
        .await?;

    let producer = client.producer().await?;
    for (i, customer) in ["ada", "grace", "alan", "ada", "grace"].iter().enumerate() {
        let record = Record::new(format!("order {i} from {customer}")).with_key(*customer);
        let delivery = producer.send_one("orders", record).await?;
        println!(
            "sent order {i} to partition {} at offset {}",
            delivery.partition, delivery.offset
        );
    }

    let mut consumer = client
        .consumer(ConsumerConfig::group("orders", "billing"))
        .await?;
    let mut processed = 0;
    while processed < 5 {
        let batch = consumer.poll(100, Duration::from_secs(5)).await?;
        if batch.is_empty() {
            return Err(tributary::Error::new(
                tributary::ErrorKind::Timeout,
                "the orders did not arrive",
            ));
        }
        for record in batch {
            println!(
                "billing read {:?} (key {:?}, partition {}, offset {})",
                String::from_utf8_lossy(&record.value),
                record.key.as_deref().map(String::from_utf8_lossy),
                record.partition,
                record.offset
            );
            consumer.ack(&record.partition, &record.offset)?;
            processed += 1;
        }
        consumer.commit().await?;
    }
    consumer.close().await?;
    producer.close().await?;
    println!("processed {processed} new orders and committed them; run again to see the group resume");
    Ok(())
}
