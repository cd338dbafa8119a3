//! Unit-testing application code with `MockProducer` (feature `mock`): the code under
//! test takes `&dyn Producer`, so a test hands it a mock with expectations.
//!
//! Run: `cargo run --example testing_with_mocks --features mock`
//! (its tests: `cargo test --example testing_with_mocks --features mock`)

use tributary::{Delivery, Error, ErrorKind, MockProducer, Offset, PartitionId, Producer, Record, SendError};

/// Application code: publishes an order keyed by its customer, and reports whether the
/// caller should retry.
async fn publish_order(producer: &dyn Producer, customer: &str, item: &str) -> Result<String, String> {
    let record = Record::new(format!("{{\"item\":\"{item}\"}}")).with_key(customer.to_owned());
    match producer.send("orders", vec![record]).await {
        Ok(deliveries) => Ok(format!(
            "stored at {}@{}",
            deliveries[0].partition, deliveries[0].offset
        )),
        Err(e) if e.is_retryable() => Err(format!("retry later: {}", e.error)),
        Err(e) => Err(format!("failed: {}", e.error)),
    }
}

fn accepting_producer() -> MockProducer {
    let mut producer = MockProducer::new();
    producer
        .expect_send()
        .withf(|stream, records| {
            stream == "orders" && records.len() == 1 && records[0].key.as_deref() == Some(b"ada")
        })
        .times(1)
        .returning(|_, _| {
            Ok(vec![Delivery {
                partition: PartitionId::from_index(2),
                offset: Offset::new(41),
                timestamp: None,
            }])
        });
    producer
}

fn throttled_producer() -> MockProducer {
    let mut producer = MockProducer::new();
    producer.expect_send().times(1).returning(|_, records| {
        Err(SendError::nothing_sent(
            Error::new(ErrorKind::Throttled, "slow down"),
            records,
        ))
    });
    producer
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let stored = publish_order(&accepting_producer(), "ada", "pizza").await;
    assert_eq!(stored.as_deref(), Ok("stored at 2@41"));
    println!("accepted: {stored:?}");
    let throttled = publish_order(&throttled_producer(), "ada", "pizza").await;
    assert!(throttled.as_ref().is_err_and(|e| e.starts_with("retry later")));
    println!("throttled: {throttled:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stored_order_reports_where() {
        assert_eq!(
            publish_order(&accepting_producer(), "ada", "pizza")
                .await
                .as_deref(),
            Ok("stored at 2@41")
        );
    }

    #[tokio::test]
    async fn throttling_asks_for_a_retry() {
        let outcome = publish_order(&throttled_producer(), "ada", "pizza").await;
        assert!(outcome.unwrap_err().starts_with("retry later"));
    }
}
