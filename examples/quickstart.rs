//! Produce and consume on the default engine: create a stream, send keyed records,
//! read them as a consumer group, acknowledge and commit.
//!
//! Run: `cargo run --example quickstart`

use std::time::Duration;

use tributary::{Client, ConsumerConfig, ProducerExt, Record, StreamSpec};

#[tokio::main]
async fn main() -> tributary::Result<()> {
    let client = Client::from_url("memory://").await?;
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
        for record in consumer.poll(100, Duration::from_secs(1)).await? {
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
    println!("processed {processed} orders and committed them");
    Ok(())
}
