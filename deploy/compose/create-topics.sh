#!/usr/bin/env bash
# Run once by the compose `topics` service (apache/kafka image): create the worker's three
# topics if they do not exist yet. Safe to repeat: existing topics are left as they are.
set -euo pipefail

bootstrap="${BOOTSTRAP_SERVERS:-kafka:9092}"
# KAFKA_TOPICS_SH lets the script be tried outside the image.
kafka_topics="${KAFKA_TOPICS_SH:-/opt/kafka/bin/kafka-topics.sh}"

topics=()
# topic:partitions. The input's partition count bounds how many workers share the load.
for spec in \
    "${INPUT_TOPIC:-email-investigate-ids}:${INPUT_PARTITIONS:-3}" \
    "${OUTPUT_TOPIC:-email-enrichment-events}:${OUTPUT_PARTITIONS:-3}" \
    "${DLQ_TOPIC:-email-enrichment-dlq}:${DLQ_PARTITIONS:-1}"; do
    topic="${spec%%:*}"
    topics+=("$topic")
    partitions="${spec##*:}"
    "$kafka_topics" --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic "$topic" --partitions "$partitions" --replication-factor 1
done

# --topic takes a regular expression when describing.
"$kafka_topics" --bootstrap-server "$bootstrap" --describe --topic "$(IFS='|'; echo "${topics[*]}")"
