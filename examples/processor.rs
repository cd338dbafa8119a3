//! Consume, transform, produce: a processor reads orders from one engine, turns each
//! into an invoice and writes it to another engine, many orders at once but each
//! customer's in order; an order is acknowledged only once its invoice is confirmed.
//!
//! Run: `cargo run --example processor` (memory to memory), or name the engines:
//! `TRIBUTARY_URL=native:///tmp/orders TRIBUTARY_SINK_URL=kafka://127.0.0.1:9092 cargo
//! run --features kafka --example processor`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary::process::{Json, Message, Processor, TypedProducer};
use tributary::{Client, ConsumerConfig, ProducerConfig, Record, StreamSpec};

const ORDERS: u64 = 1_000;
const CUSTOMERS: u64 = 25;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
    customer: String,
    cents: u64,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Invoice {
    order: u64,
    customer: String,
    total_cents: u64,
}

#[tokio::main]
async fn main() -> tributary::Result<()> {
    let source_url = std::env::var("TRIBUTARY_URL").unwrap_or_else(|_| "memory://".into());
    let sink_url = std::env::var("TRIBUTARY_SINK_URL").unwrap_or_else(|_| "memory://".into());
    let source = Client::from_url(&source_url).await?;
    let sink = Client::from_url(&sink_url).await?;
    // Fresh names on every run: a broker keeps the streams of earlier runs.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000_000)
        .unwrap_or_default();
    let (orders, invoices) = (format!("orders-{run}"), format!("invoices-{run}"));
    source
        .ensure_stream(&StreamSpec::new(&orders).with_partitions(4))
        .await?;
    sink.ensure_stream(&StreamSpec::new(&invoices).with_partitions(2))
        .await?;

    let records = (0..ORDERS).map(|id| {
        let customer = format!("customer-{}", id % CUSTOMERS);
        Record::json(&Order {
            id,
            customer: customer.clone(),
            cents: 100 + id,
        })
        .map(|record| record.with_key(customer))
    });
    let records = records.collect::<tributary::Result<Vec<_>>>()?;
    source.producer().await?.send(&orders, records).await?;
    println!("{ORDERS} orders in {orders} on {}", source.engine());

    let out = Arc::new(TypedProducer::open(&sink, ProducerConfig::default(), Json::<Invoice>::new()).await?);
    let running = {
        let (out, invoices) = (out.clone(), invoices.clone());
        Processor::builder(
            &source,
            ConsumerConfig::group(&orders, format!("invoicing-{run}")),
        )
        .codec(Json::<Order>::new())
        .concurrency(32)
        .start(move |order: Message<Order>| {
            let (out, invoices) = (out.clone(), invoices.clone());
            async move {
                let invoice = Invoice {
                    order: order.value.id,
                    customer: order.value.customer.clone(),
                    total_cents: order.value.cents * 120 / 100,
                };
                // Awaited, so the order is acknowledged only once its invoice is
                // written: a crash redelivers it rather than losing the invoice.
                out.send(&invoices, order.key.clone(), &invoice).await?;
                Ok(())
            }
        })
        .await?
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.stats().handled < ORDERS {
        assert!(
            Instant::now() < deadline,
            "{ORDERS} orders invoiced within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let summary = running.stop().await?;
    out.close().await?;
    println!("invoiced {} orders", summary.handled);

    // Each customer's invoices are in the order of their orders.
    let mut reader = sink.consumer(ConsumerConfig::broadcast(&invoices)).await?;
    let mut by_customer: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut invoiced = BTreeSet::new();
    while (invoiced.len() as u64) < ORDERS {
        assert!(
            Instant::now() < deadline,
            "{ORDERS} invoices read back within 2 minutes"
        );
        for record in reader.poll(500, Duration::from_millis(200)).await? {
            let invoice: Invoice = record.json()?;
            invoiced.insert(invoice.order);
            by_customer
                .entry(invoice.customer)
                .or_default()
                .push(invoice.order);
        }
    }
    reader.close().await?;
    for (customer, orders) in &by_customer {
        assert!(
            orders.is_sorted(),
            "{customer}'s invoices out of order: {orders:?}"
        );
    }
    assert_eq!(by_customer.len() as u64, CUSTOMERS);
    println!(
        "{} invoices in {invoices} on {}, each customer's in order",
        invoiced.len(),
        sink.engine()
    );
    Ok(())
}
