package audit

import (
	"context"
	"testing"
	"time"
)

// benchEvent is a typical denial line (about 330 bytes on disk).
var benchEvent = Event{Action: "mqtt.connect", Outcome: "denied", Actor: "device:a1b2c3d4", Reason: "client-id-mismatch",
	Remote: "203.0.113.7:50122", Listener: "mqtts", Details: map[string]string{"client_id": "a1b2c3d5"}}

// BenchmarkRecord is the cost a caller pays per event with the shipped
// policy: the line is written at once, fsync and head are group-committed
// in the background.
func BenchmarkRecord(b *testing.B) {
	l := openTest(b, "")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		l.Record(ctx, benchEvent)
	}
	b.StopTimer()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkRecordParallel is many goroutines (broker hooks) recording at
// once.
func BenchmarkRecordParallel(b *testing.B) {
	l := openTest(b, "")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			l.Record(ctx, benchEvent)
		}
	})
	b.StopTimer()
	l.Close()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkRecordSyncEach is the policy not chosen, for comparison: every
// event fsynced and the head moved before Record returns.
func BenchmarkRecordSyncEach(b *testing.B) {
	l := openTest(b, "")
	ctx := context.Background()
	for b.Loop() {
		l.Record(ctx, benchEvent)
		if err := l.commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func benchLog(b *testing.B, n int) string {
	b.Helper()
	return pagedLog(b, n, time.Unix(1e9, 0))
}

func BenchmarkVerify(b *testing.B) {
	path := benchLog(b, 20_000)
	b.ResetTimer()
	for b.Loop() {
		if rep, err := Verify(path); err != nil || !rep.OK {
			b.Fatal(err, rep.Problems)
		}
	}
	b.ReportMetric(float64(20_000*b.N)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkReadPage reads a page from the middle of a 20,000-entry log.
func BenchmarkReadPage(b *testing.B) {
	path := benchLog(b, 20_000)
	b.ResetTimer()
	for b.Loop() {
		if p, err := Read(path, Filter{AfterSeq: 10_000, Limit: 100}); err != nil || len(p.Entries) != 100 {
			b.Fatal(err, len(p.Entries))
		}
	}
}

func BenchmarkTail(b *testing.B) {
	path := benchLog(b, 20_000)
	b.ResetTimer()
	for b.Loop() {
		if es, err := Tail(path, 20); err != nil || len(es) != 20 {
			b.Fatal(err)
		}
	}
}
