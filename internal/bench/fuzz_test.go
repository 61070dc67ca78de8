package bench

import (
	"bufio"
	"bytes"
	"math"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/eclipse/paho.golang/packets"
)

// The parsers read text from /proc and from a server's /metrics, and MQTT
// packets from a server: none is trusted to be well formed (a process
// names itself; a server under test may be broken). None may panic, and
// what they accept must be sane.

func FuzzParseStat(f *testing.F) {
	f.Add([]byte(statLine))
	f.Add([]byte(strings.Replace(statLine, "(warden)", "(a) b (c)", 1)))
	f.Add([]byte("1 () R"))
	f.Add([]byte(")("))
	f.Add([]byte("1 (x) S 1 1 1 0 -1 0 0 0 0 0 18446744073709551615 18446744073709551615 0 0 20 0 2147483647 0"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ps, err := parseStat(b)
		if err != nil {
			return
		}
		if ps.threads < 0 {
			t.Fatalf("negative thread count %d", ps.threads)
		}
		// The CPU time never overflows into a negative duration.
		if d := ticksToDuration(ps.utime) + ticksToDuration(ps.stime); d < 0 {
			t.Fatalf("CPU time %v from %d + %d ticks", d, ps.utime, ps.stime)
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	f.Add([]byte(statusText))
	f.Add([]byte("VmRSS:\t0 kB\n"))
	f.Add([]byte("VmRSS:\t18014398509481983 kB\nThreads:\t2147483647\n"))
	f.Add([]byte("VmRSS:"))
	f.Add([]byte("Threads:\t\nVmRSS:\t1 kB kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseStatus(b)
		if err != nil {
			return
		}
		if st.rss%1024 != 0 || st.hwm%1024 != 0 || st.threads < 0 {
			t.Fatalf("implausible status %+v", st)
		}
	})
}

func FuzzParseMetrics(f *testing.F) {
	f.Add([]byte(metricsText))
	f.Add([]byte("go_memstats_heap_inuse_bytes 1\ngo_memstats_heap_alloc_bytes 2\n"))
	f.Add([]byte("go_memstats_heap_inuse_bytes{} 1\n"))
	f.Add([]byte("go_memstats_heap_inuse_bytes 1e400\n"))
	f.Add([]byte("go_memstats_heap_inuse_bytes -0 1 2\n"))
	f.Add([]byte("# TYPE x\n\n\r\n go_goroutines 0x10"))
	f.Fuzz(func(t *testing.T, b []byte) {
		names := []string{metricHeapInuse, metricHeapAlloc, metricHeapSys, metricGoroutines}
		m, err := parseMetrics(b, names...)
		if err != nil {
			return
		}
		for k, v := range m {
			if !strings.HasPrefix(k, "go_") {
				t.Fatalf("unwanted series %q", k)
			}
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("%s = %v", k, v)
			}
			// What was accepted reads back the same when written alone.
			again, err := parseMetrics([]byte(k+" "+strconv.FormatFloat(v, 'g', -1, 64)), k)
			if err != nil || again[k] != v {
				t.Fatalf("%s = %v does not round-trip: %v %v", k, v, again, err)
			}
		}
		if h, err := parseGoHeap(b); err == nil && h.HeapInuse == 0 && m[metricHeapInuse] >= 1 {
			t.Fatalf("heap %+v from %v", h, m)
		}
	})
}

func FuzzCPUModel(f *testing.F) {
	f.Add([]byte("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"))
	f.Add([]byte("model name:"))
	f.Add([]byte(":\n:"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := cpuModel(b)
		if !utf8.ValidString(s) || strings.ContainsAny(s, "\n") {
			t.Fatalf("cpuModel = %q", s)
		}
	})
}

// FuzzReadPacket reads packets as a benchmark client does. Whatever it
// decodes as a PUBLISH must agree with paho's decoder where that accepts
// the same bytes (the lean decoder skips properties, which paho checks, so
// it may accept more, never read differently).
func FuzzReadPacket(f *testing.F) {
	f.Add(encode(f, relayedPublish(0, 0, []byte("sixteen bytes!!!"))))
	f.Add(encode(f, relayedPublish(1, 7, bytes.Repeat([]byte{1}, 200))))
	f.Add(encode(f, &packets.Puback{PacketID: 1, Properties: &packets.Properties{}}, &packets.Disconnect{Properties: &packets.Properties{}}))
	f.Add([]byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Add([]byte{0x3b, 0x06, 0x00, 0x01, 'a', 0x00, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		src := bytes.NewReader(b)
		r := bufio.NewReader(src)
		off := 0 // where the next packet starts in b
		for range 8 {
			cp, err := readPacket(r)
			if err != nil {
				return
			}
			end := len(b) - src.Len() - r.Buffered()
			if p, ok := cp.Content.(*packets.Publish); ok {
				if p.QoS > 2 || (p.QoS > 0 && p.PacketID == 0) {
					t.Fatalf("accepted %+v", p)
				}
				if ref, err := packets.ReadPacket(bytes.NewReader(b[off:end])); err == nil {
					q, ok := ref.Content.(*packets.Publish)
					if !ok || q.Topic != p.Topic || !bytes.Equal(q.Payload, p.Payload) || q.QoS != p.QoS || q.PacketID != p.PacketID ||
						q.Retain != p.Retain || q.Duplicate != p.Duplicate {
						t.Fatalf("read %+v, paho reads %+v", p, ref.Content)
					}
				}
			}
			off = end
		}
	})
}
