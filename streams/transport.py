"""faust's aiokafka transport with the five changes creditwatch needs.

1. ``fetch_max_wait_ms`` is configurable. faust hard-codes 1500 ms; the
   embedded broker answers a fetch with no new data only at that deadline, so
   an untuned worker adds up to 1.5 s to every event.

2. Table recovery takes each changelog partition's end offset from a Fetch
   response's high watermark, not from ListOffsets. The embedded Tansu build
   answers ListOffsets(latest) with the last record batch's base offset + 1
   (pinned by ``tests/test_embedded_broker.py``), and faust reads a changelog
   only up to that offset, so a table came back from SIGKILL missing the
   updates of the last batch. The high watermark in a Fetch response is right
   on Tansu and is the same figure ListOffsets gives on Apache Kafka, so this
   is exact on both.

3. Stream partitions are not delivered while they are being seeked to their
   committed offsets. After table recovery faust resumes the stream
   partitions, then awaits ``perform_seek()`` with the flow still running
   from the changelog phase, then resumes its flow control, which clears the
   stream queues. Records fetched during the seek were put in those queues
   and dropped; faust's read offset had moved past them, so the re-fetch
   from the committed offset skipped them, and the offset gap they left was
   counted as acknowledged and committed. A worker restarted after SIGKILL
   lost a few events per partition this way (``tests/test_worker.py``).
   Stopping the consumer flow before the seek ends the pre-seek fetch
   iterator; every caller of ``perform_seek`` resumes the flow afterwards,
   and reading restarts from the committed offsets.

4. A stream partition with no committed offset yet is sought back to its
   start. aiokafka's ``seek_to_committed`` moves only partitions with a
   commit, so on the others the records dropped under (3) stayed skipped. A
   worker restarted after a SIGKILL that came before its first commit (1 s)
   had fetched every record while its table recovered, dropped them, and
   then sat idle at the end of each partition (``tests/test_transport.py``
   pins aiokafka's behaviour; ``tests/test_worker.py`` failed this way in 3
   of about 120 runs).

5. Fetched records reach the streams with one guard per fetched chunk, not
   per record. faust's ``Consumer._drain_messages`` hands each record over
   under ``wait_first(callback(record), suspend_flow.wait())``: four asyncio
   tasks and an ``asyncio.wait`` per record, so that a rebalance (which
   suspends the flow) can abandon a hand-over blocked on a full stream
   queue. That was about 50 µs of the worker's event loop per event. Here
   one ``wait_first`` guards the hand-over of the whole chunk a ``getmany``
   returned, and what faust does record by record is kept: before each
   record, the checks faust's ``getmany`` makes between the records it
   yields (flow still active, same consumer generation; the rest of the
   chunk is left, as there); when the flow is suspended during a hand-over,
   the record being handed over counts as read and the rest of the chunk is
   left, as faust's loop does (``tests/test_transport.py``).

The transport is registered under the URL scheme ``creditwatch-kafka://``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping

from aiokafka.protocol.fetch import FetchRequest
from faust.transport import drivers
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

SCHEME = "creditwatch-kafka"

#: Set by the worker before the app starts (one worker per process).
FETCH_MAX_WAIT_MS = 20
#: Only for the test that shows why the fetch-based end offsets matter.
NAIVE_RECOVERY = False


class HighwaterError(RuntimeError):
    pass


async def fetch_high_watermarks(client: Any, partitions: Iterable[TP], starts: Mapping[TP, int]) -> dict[TP, int]:
    """End offset of each partition, from the high watermark a Fetch returns."""
    by_leader: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(lambda: defaultdict(list))
    wanted = list(partitions)
    for tp in wanted:
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            raise HighwaterError(f"no leader known for {tp.topic}[{tp.partition}]")
        # Fetch at most one byte: only the header (with the high watermark) is wanted.
        by_leader[leader][tp.topic].append((tp.partition, starts[tp], 1))
    result: dict[TP, int] = {}
    for leader, topics in by_leader.items():
        # max_wait must be > 0: Tansu answers max_wait=0 with no topics at all.
        response = await client.send(leader, FetchRequest(100, 0, 1, 0, list(topics.items())))
        for topic, parts in response.topics:
            for partition, error, high_watermark, *_ in parts:
                if error:
                    raise HighwaterError(f"fetch for the end of {topic}[{partition}] failed with error code {error}")
                result[TP(topic, partition)] = high_watermark
    missing = set(wanted) - set(result)
    if missing:
        raise HighwaterError(f"no high watermark returned for {sorted(missing)}")
    return result


async def seek_uncommitted_to_start(consumer: Any, committed: Mapping[TP, int | None],
                                    skip: Callable[[TP], bool]) -> list[TP]:
    """After ``seek_to_committed``: move each partition with no committed offset back to its start.

    aiokafka's ``seek_to_committed`` seeks only partitions whose committed
    offset is above 0 and leaves the others where the consumer had read to.
    faust drops what it fetched while it seeks; a partition with no commit
    yet then resumes after those records, and they are never processed. The
    start is what ``auto_offset_reset="earliest"`` gives a fresh group.
    Partitions for which ``skip`` is true (the changelogs, whose positions
    recovery sets) are left alone. Returns the partitions moved.
    """
    fresh = [tp for tp, offset in committed.items() if not offset and not skip(tp)]
    if fresh:
        await consumer.seek_to_beginning(*fresh)
    return fresh


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka copies this into its Fetcher in start(), which comes later.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed_or_start)

    async def _seek_to_committed_or_start(self) -> Mapping[TP, int]:
        # See (4) above.
        consumer = self._ensure_consumer()
        committed = await consumer.seek_to_committed()
        changelogs = self.consumer.app.tables.changelog_topics
        await seek_uncommitted_to_start(consumer, committed, skip=lambda tp: tp.topic in changelogs)
        return committed

    async def _highwaters(self, partitions: Any) -> Mapping[TP, int]:
        if NAIVE_RECOVERY or self.consumer.in_transaction:
            return await super()._highwaters(partitions)
        consumer = self._ensure_consumer()
        partitions = list(partitions)
        if not partitions:
            return {}
        starts = await consumer.beginning_offsets(partitions)
        return await fetch_high_watermarks(consumer._client, partitions, starts)


class Consumer(faust_aiokafka.Consumer):
    #: Records handed over between two yields to the event loop (faust's figure).
    YIELD_EVERY = 100

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        # See (5) above: faust's loop (faust/transport/consumer.py, 0.15), with the guard moved from the record
        # to the chunk. What faust's getmany checks between yields is checked here before each hand-over.
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records = self.getmany(timeout=1.0)
                await self.sleep(0)  # (as faust: getmany may return at once, again and again)
                if not self.should_stop:
                    chunk = [item async for item in records]
                    # The generation getmany yielded these under: it reads it after its wait for records, and
                    # nothing runs between that and the end of the chunk (getmany yields without awaiting).
                    generation = self.app.consumer_generation_id
                    if chunk:
                        in_flight: list[Any] = [None]
                        await self.wait_first(self._hand_over(chunk, generation, in_flight), self.suspend_flow.wait())
                        if in_flight[0] is not None:
                            # Abandoned mid-hand-over (the flow was suspended): faust counts that one as read.
                            tp, offset = in_flight[0]
                            self._read_offset[tp] = offset
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _hand_over(self, chunk: list[tuple[TP, Any]], generation: int, in_flight: list[Any]) -> None:
        """Hand ``chunk`` to the streams in order; ``in_flight[0]`` is (tp, offset) of a hand-over under way."""
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        since_yield = 0
        for tp, message in chunk:
            since_yield += 1
            if since_yield > self.YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return  # what faust's getmany would not have yielded
            offset = message.offset
            last = read_offset[tp]
            if last is not None and offset < last:
                continue  # read already (faust drops it too)
            gap = offset - (last or 0)
            if gap > 1 and last and acks_enabled_for(message.topic):
                await self._add_gap(tp, last + 1, offset)
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()
            in_flight[0] = (tp, offset)
            await callback(message)
            in_flight[0] = None
            read_offset[tp] = offset

    async def perform_seek(self) -> None:
        # See (3) above. Callers: Recovery.on_recovery_completed and
        # Recovery._resume_streams (both call resume_flow() right after), and
        # Consumer.getmany when the flow is already stopped.
        self.stop_flow()
        await super().perform_seek()


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
