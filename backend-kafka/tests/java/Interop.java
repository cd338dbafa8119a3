// Another Kafka client for the interop test: Apache Kafka's own Java client.
//   read BOOTSTRAP TOPIC COUNT    prints COUNT records: partition, offset, key, value,
//                                 headers (name=value, hex) and timestamp, tab-separated
//   write BOOTSTRAP TOPIC KEY...  sends one record per key with the default partitioner
//                                 and prints each key with the partition it went to
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Properties;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class Interop {
    static String hex(byte[] bytes) {
        if (bytes == null) {
            return "-";
        }
        StringBuilder s = new StringBuilder();
        for (byte b : bytes) {
            s.append(String.format("%02x", b));
        }
        return s.toString();
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[1];
        String topic = args[2];
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        if (args[0].equals("read")) {
            int expected = Integer.parseInt(args[3]);
            props.put("key.deserializer", ByteArrayDeserializer.class.getName());
            props.put("value.deserializer", ByteArrayDeserializer.class.getName());
            props.put("enable.auto.commit", "false");
            try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
                List<TopicPartition> partitions = consumer.partitionsFor(topic).stream()
                        .map(p -> new TopicPartition(topic, p.partition())).toList();
                consumer.assign(partitions);
                consumer.seekToBeginning(partitions);
                int read = 0;
                long deadline = System.currentTimeMillis() + 60_000;
                while (read < expected && System.currentTimeMillis() < deadline) {
                    for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                        StringBuilder headers = new StringBuilder();
                        for (Header h : r.headers()) {
                            if (headers.length() > 0) {
                                headers.append(',');
                            }
                            headers.append(hex(h.key().getBytes(StandardCharsets.UTF_8))).append('=').append(hex(h.value()));
                        }
                        System.out.println("REC\t" + r.partition() + "\t" + r.offset() + "\t" + hex(r.key()) + "\t"
                                + hex(r.value()) + "\t" + headers + "\t" + r.timestamp());
                        read++;
                    }
                }
            }
        } else if (args[0].equals("write")) {
            props.put("key.serializer", ByteArraySerializer.class.getName());
            props.put("value.serializer", ByteArraySerializer.class.getName());
            props.put("acks", "all");
            try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
                for (int i = 3; i < args.length; i++) {
                    byte[] key = args[i].getBytes(StandardCharsets.UTF_8);
                    RecordMetadata m = producer.send(new ProducerRecord<>(topic, key, key)).get();
                    System.out.println("KEY\t" + args[i] + "\t" + m.partition());
                }
            }
        } else {
            throw new IllegalArgumentException("read or write");
        }
    }
}
