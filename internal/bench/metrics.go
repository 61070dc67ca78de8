package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"
)

// maxMetricsBody bounds a /metrics response; Warden's is about 40 KiB.
const maxMetricsBody = 16 << 20

// Names of the Prometheus series ScrapeGoHeap reads (client_golang's Go
// and process collectors, which Warden registers).
const (
	metricHeapInuse  = "go_memstats_heap_inuse_bytes"
	metricHeapAlloc  = "go_memstats_heap_alloc_bytes"
	metricHeapSys    = "go_memstats_heap_sys_bytes"
	metricStackInuse = "go_memstats_stack_inuse_bytes"
	metricNextGC     = "go_memstats_next_gc_bytes"
	metricGoroutines = "go_goroutines"
)

// GoHeap is the Go runtime's view of a server's memory, from its /metrics.
// Set against the process's RSS it tells the heap a connection costs from
// what the runtime keeps around (stacks, free spans not yet returned).
type GoHeap struct {
	// HeapInuse is bytes in in-use heap spans; HeapAlloc bytes of live
	// (and not yet swept) objects; HeapSys bytes of heap obtained from
	// the OS.
	HeapInuse uint64 `json:"heap_inuse_bytes"`
	HeapAlloc uint64 `json:"heap_alloc_bytes"`
	HeapSys   uint64 `json:"heap_sys_bytes"`
	// StackInuse is bytes of goroutine stacks; NextGC the heap size at
	// which the next collection starts (GOGC's headroom over the live
	// heap). Both are 0 when the endpoint does not export them.
	StackInuse uint64 `json:"stack_inuse_bytes"`
	NextGC     uint64 `json:"next_gc_bytes"`
	// Goroutines is 0 when the endpoint does not export go_goroutines.
	Goroutines uint64 `json:"goroutines"`
}

// ScrapeGoHeap fetches a Prometheus text endpoint (Warden's
// http://127.0.0.1:PORT/metrics, Proc.MetricsURL) and reads the Go heap
// from it. go_memstats_heap_inuse_bytes and go_memstats_heap_alloc_bytes
// are required.
func ScrapeGoHeap(ctx context.Context, metricsURL string) (GoHeap, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return GoHeap{}, fmt.Errorf("bench: scrape %s: %w", metricsURL, err)
	}
	// The text format, not OpenMetrics or protobuf: that is what the
	// parser reads.
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return GoHeap{}, fmt.Errorf("bench: scrape %s: %w (is the server's http listener on?)", metricsURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return GoHeap{}, fmt.Errorf("bench: scrape %s: HTTP %s", metricsURL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxMetricsBody+1))
	if err != nil {
		return GoHeap{}, fmt.Errorf("bench: scrape %s: %w", metricsURL, err)
	}
	if len(body) > maxMetricsBody {
		return GoHeap{}, fmt.Errorf("bench: scrape %s: more than %d bytes; not a metrics endpoint?", metricsURL, maxMetricsBody)
	}
	h, err := parseGoHeap(body)
	if err != nil {
		return GoHeap{}, fmt.Errorf("bench: scrape %s: %w", metricsURL, err)
	}
	return h, nil
}

// parseGoHeap picks GoHeap's series out of a text exposition.
func parseGoHeap(body []byte) (GoHeap, error) {
	m, err := parseMetrics(body, metricHeapInuse, metricHeapAlloc, metricHeapSys, metricStackInuse, metricNextGC, metricGoroutines)
	if err != nil {
		return GoHeap{}, err
	}
	var h GoHeap
	for _, f := range []struct {
		name     string
		dst      *uint64
		required bool
	}{
		{metricHeapInuse, &h.HeapInuse, true},
		{metricHeapAlloc, &h.HeapAlloc, true},
		{metricHeapSys, &h.HeapSys, false},
		{metricStackInuse, &h.StackInuse, false},
		{metricNextGC, &h.NextGC, false},
		{metricGoroutines, &h.Goroutines, false},
	} {
		v, ok := m[f.name]
		if !ok {
			if f.required {
				return GoHeap{}, fmt.Errorf("no %s sample (is this a Go process's endpoint?)", f.name)
			}
			continue
		}
		if v < 0 || v >= 1<<63 {
			return GoHeap{}, fmt.Errorf("%s = %v is not a byte count", f.name, v)
		}
		*f.dst = uint64(v)
	}
	return h, nil
}

// parseMetrics reads the Prometheus text exposition format (version
// 0.0.4) far enough to return the value of each named series that has no
// labels. Comments and every other series are skipped; a wanted series
// whose value does not parse, or is not finite, is an error, and so is the
// same series twice. Lines are "name value [timestamp]" or
// "name{labels} value [timestamp]".
func parseMetrics(body []byte, names ...string) (map[string]float64, error) {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	out := make(map[string]float64, len(names))
	lineNo := 0
	for len(body) > 0 {
		var line []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			line, body = body, nil
		}
		lineNo++
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		end := bytes.IndexAny(line, "{ \t")
		if end < 0 {
			continue // a bare name without a value: not a sample
		}
		name := string(line[:end])
		if !want[name] || line[end] == '{' {
			continue // a labelled sample is not the process-wide value
		}
		fields := bytes.Fields(line[end:])
		if len(fields) < 1 || len(fields) > 2 {
			return nil, fmt.Errorf("line %d: %s: want a value and an optional timestamp, got %d fields", lineNo, name, len(fields))
		}
		v, err := strconv.ParseFloat(string(fields[0]), 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %s: %q is not a number", lineNo, name, fields[0])
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("line %d: %s: %v is not a finite value", lineNo, name, v)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("line %d: %s appears twice", lineNo, name)
		}
		out[name] = v
	}
	return out, nil
}
