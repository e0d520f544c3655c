"""One consumer for all the partitions a live read reads in one DoFn instance, a queue each.

The DirectRunner reads a topic's partitions one after another, in one thread. Re-assigned for each read slice,
the read's consumer fetched a partition only once the previous partition's fetch had come back, which the broker
holds up to ``fetch.wait.max.ms`` while there is nothing new: every slice began with up to 100 ms of nothing, and
a burst waited for three of them (docs/design.md, "Bursts"). Here each partition is assigned once and librdkafka
fetches them all in the background; ``take`` hands out one partition's messages, and waits only while no
partition has any.
"""
from __future__ import annotations

import collections

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition


class PartitionQueues:
    """``start(topic, partition, offset)`` at the start of a slice, then ``take(...)`` until it says the slice is
    done; ``at_end(...)``: the partition's end was read and nothing came after it."""

    CAP = 2_000  # messages queued for a partition not being read, past which it is paused (read elsewhere now?)

    def __init__(self, consumer: Consumer):
        self._consumer = consumer
        self._queues: dict[tuple[str, int], collections.deque] = {}
        self._next: dict[tuple[str, int], int] = {}  # the offset a partition's queue goes on from
        self._ended: set[tuple[str, int]] = set()
        self._paused: set[tuple[str, int]] = set()
        self._errors: list[Message] = []  # other than a partition's end; handed to the next take
        self._empty_looks = 0  # looks at the consumer in a row that found no message

    def start(self, topic: str, partition: int, offset: int) -> None:
        """Ready the partition's queue to go on from ``offset``: assigned the first time, fetched again from there if
        its queue goes on from elsewhere (a retried bundle), resumed if paused."""
        key, at = (topic, partition), TopicPartition(topic, partition, offset)
        if key in self._paused:
            self._consumer.resume([at])
            self._paused.discard(key)
        if key not in self._queues:
            self._consumer.incremental_assign([at])
            self._queues[key] = collections.deque()
        elif self._next[key] != offset:
            self._consumer.incremental_unassign([at])
            self._consumer.incremental_assign([at])
            self._queues[key].clear()
            self._ended.discard(key)
        self._next[key] = offset

    def take(self, topic: str, partition: int, most: int, wait_s: float) -> tuple[list[Message], bool]:
        """Up to ``most`` of the partition's next messages (errors first), and whether its slice is done: nothing of
        it left queued, and it is at its end, or another partition has messages waiting (whose read should come
        next), or ``wait_s`` is 0. With fewer than ``most`` queued, it takes what the consumer has, and with none,
        waits up to ``wait_s`` for the first message of any partition once a look for each partition has found
        nothing (the topic is quiet: the waits pace the runner's loop, and the partitions whose turn comes right
        after messages do not hold them back)."""
        key = (topic, partition)
        queue = self._queues[key]
        while len(queue) < most and self._fill(
                key, most, wait_s if not queue and self._empty_looks >= len(self._queues) else 0):
            pass
        taken = [queue.popleft() for _ in range(min(most, len(queue)))]
        if taken:
            self._next[key] = taken[-1].offset() + 1
        errors, self._errors = self._errors, []
        done = not queue and (not wait_s or key in self._ended or any(waiting for other, waiting
                                                                      in self._queues.items() if other != key))
        return errors + taken, done

    def at_end(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self._ended and not self._queues[(topic, partition)]

    def _fill(self, reading: tuple[str, int], most: int, wait_s: float) -> int:
        """Queues what the consumer has, up to ``most`` and one (waiting up to ``wait_s`` for the first of it); how
        many messages came."""
        # consume() waits its whole timeout unless its batch fills: wait for one message, then take what is there.
        received = self._consumer.consume(1, timeout=wait_s)
        received += self._consumer.consume(most, timeout=0) if received else []
        messages = sum(msg.error() is None for msg in received)  # (a partition's end is not news)
        self._empty_looks = 0 if messages else self._empty_looks + 1
        for msg in received:
            err = msg.error()
            key = (msg.topic(), msg.partition())
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._ended.add(key)
                else:
                    self._errors.append(msg)
                continue
            queue = self._queues[key]  # (only partitions started here are assigned)
            queue.append(msg)
            self._ended.discard(key)
            if len(queue) > self.CAP and key != reading and key not in self._paused:
                self._consumer.pause([TopicPartition(*key)])
                self._paused.add(key)
        return messages
