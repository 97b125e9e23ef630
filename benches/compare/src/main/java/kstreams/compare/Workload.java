package kstreams.compare;

import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.EmitStrategy;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.WindowedSerdes;
import org.apache.kafka.streams.processor.StateRestoreListener;

/**
 * One workload of the comparison, run until the process is stopped: the Kafka Streams side of
 * {@code benches/compare_workload.rs}, written as a Kafka Streams user would, with Kafka
 * Streams' defaults except exactly-once v2 and the commit interval.
 *
 * <p>Arguments: WORKLOAD BOOTSTRAP INPUT OUTPUT APPLICATION_ID STATE_DIR COMMIT_INTERVAL_MS
 * [NAME=VALUE ...], the last ones further Streams configs (the recovery measurement passes
 * {@code enable.transactional.statestores=true}). Workloads: {@code map} (each value with "!"
 * appended), {@code count} (a count per key), {@code window-count} (a count per key in
 * 10-second tumbling windows, every update), {@code window-count-final} (the same, final
 * results only) and {@code join} (each record joined with the row of its key in the table
 * read from topic INPUT-table).
 *
 * <p>The end of every store restoration is reported on stdout, one line per changelog
 * partition ({@code restored STORE PARTITION RECORDS}): the driver counts the records restored
 * from these lines.
 */
public final class Workload {
    private Workload() {}

    public static void main(String[] args) throws InterruptedException {
        if (args.length < 7) {
            System.err.println(
                "usage: Workload WORKLOAD BOOTSTRAP INPUT OUTPUT APPLICATION_ID STATE_DIR COMMIT_INTERVAL_MS [NAME=VALUE ...]");
            System.exit(2);
        }
        String workload = args[0];
        String input = args[2];
        String output = args[3];

        Properties props = new Properties();
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[4]);
        props.put(StreamsConfig.STATE_DIR_CONFIG, args[5]);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, args[6]);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        for (int i = 7; i < args.length; i++) {
            String[] setting = args[i].split("=", 2);
            if (setting.length != 2) {
                System.err.println("not a NAME=VALUE setting: " + args[i]);
                System.exit(2);
            }
            props.put(setting[0], setting[1]);
        }

        StreamsBuilder builder = new StreamsBuilder();
        KStream<String, String> stream = builder.stream(input);
        Duration size = Duration.ofSeconds(10);
        switch (workload) {
            case "map" -> stream.mapValues(v -> v + "!").to(output);
            case "count" -> stream.groupByKey()
                .count()
                .toStream()
                .to(output, Produced.with(Serdes.String(), Serdes.Long()));
            case "window-count" -> stream.groupByKey()
                .windowedBy(TimeWindows.ofSizeWithNoGrace(size))
                .count()
                .toStream()
                .to(output, Produced.with(
                    WindowedSerdes.timeWindowedSerdeFrom(String.class, size.toMillis()),
                    Serdes.Long()));
            case "window-count-final" -> stream.groupByKey()
                .windowedBy(TimeWindows.ofSizeWithNoGrace(size))
                .emitStrategy(EmitStrategy.onWindowClose())
                .count()
                .toStream()
                .to(output, Produced.with(
                    WindowedSerdes.timeWindowedSerdeFrom(String.class, size.toMillis()),
                    Serdes.Long()));
            case "join" -> {
                KTable<String, String> table = builder.table(input + "-table");
                stream.join(table, (v, t) -> v + ":" + t).to(output);
            }
            default -> {
                System.err.println("unknown workload " + workload);
                System.exit(2);
            }
        }

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        streams.setGlobalStateRestoreListener(new StateRestoreListener() {
            @Override
            public void onRestoreStart(TopicPartition partition, String store, long from, long to) {}

            @Override
            public void onBatchRestored(TopicPartition partition, String store, long last, long records) {}

            @Override
            public void onRestoreEnd(TopicPartition partition, String store, long records) {
                System.out.println("restored " + store + " " + partition.partition() + " " + records);
            }
        });
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(30));
            stopped.countDown();
        }));
        streams.start();
        stopped.await();
    }
}
