package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const metricsText = `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
# HELP go_memstats_heap_alloc_bytes Number of heap bytes allocated and currently in use.
# TYPE go_memstats_heap_alloc_bytes gauge
go_memstats_heap_alloc_bytes 1.2345678e+07
go_memstats_heap_inuse_bytes 16777216
go_memstats_heap_sys_bytes 3.3554432e+07 1700000000000
go_memstats_stack_inuse_bytes 65536
go_memstats_next_gc_bytes 2.4e+07
warden_connections{listener="mqtts"} 5
go_memstats_heap_inuse_bytes_total{x="y"} 1
`

func TestParseMetrics(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		names   []string
		want    map[string]float64
		wantErr string
	}{
		{"wanted series", metricsText, []string{"go_goroutines", "go_memstats_heap_sys_bytes"},
			map[string]float64{"go_goroutines": 42, "go_memstats_heap_sys_bytes": 33554432}, ""},
		{"labelled samples are skipped", metricsText, []string{"warden_connections"}, map[string]float64{}, ""},
		{"prefix of another name", "go_memstats_heap_inuse_bytes_total 5\n", []string{"go_memstats_heap_inuse_bytes"}, map[string]float64{}, ""},
		{"tabs and CRLF", "go_goroutines\t7\r\n", []string{"go_goroutines"}, map[string]float64{"go_goroutines": 7}, ""},
		{"not a number", "go_goroutines many\n", []string{"go_goroutines"}, nil, "not a number"},
		{"NaN", "go_goroutines NaN\n", []string{"go_goroutines"}, nil, "not a finite"},
		{"infinite", "go_goroutines +Inf\n", []string{"go_goroutines"}, nil, "not a finite"},
		{"twice", "go_goroutines 1\ngo_goroutines 2\n", []string{"go_goroutines"}, nil, "twice"},
		{"extra fields", "go_goroutines 1 2 3\n", []string{"go_goroutines"}, nil, "fields"},
		{"bare name", "go_goroutines\n", []string{"go_goroutines"}, map[string]float64{}, ""},
		{"empty", "", []string{"go_goroutines"}, map[string]float64{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMetrics([]byte(tc.in), tc.names...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Fatalf("%s = %v, want %v", k, got[k], v)
				}
			}
		})
	}
}

func TestParseGoHeap(t *testing.T) {
	h, err := parseGoHeap([]byte(metricsText))
	if err != nil {
		t.Fatal(err)
	}
	want := GoHeap{HeapInuse: 16777216, HeapAlloc: 12345678, HeapSys: 33554432, StackInuse: 65536, NextGC: 24000000, Goroutines: 42}
	if h != want {
		t.Fatalf("got %+v, want %+v", h, want)
	}
	if _, err := parseGoHeap([]byte("go_goroutines 1\n")); err == nil || !strings.Contains(err.Error(), "go_memstats_heap_inuse_bytes") {
		t.Fatalf("a response without the heap: %v", err)
	}
	if _, err := parseGoHeap([]byte("go_memstats_heap_inuse_bytes -1\ngo_memstats_heap_alloc_bytes 1\n")); err == nil {
		t.Fatal("a negative byte count was accepted")
	}
}

// TestScrapeGoHeap scrapes the real exposition of client_golang's Go
// collector, as Warden registers it.
func TestScrapeGoHeap(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	defer srv.Close()
	h, err := ScrapeGoHeap(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if h.HeapInuse == 0 || h.HeapAlloc == 0 || h.HeapSys < h.HeapInuse || h.Goroutines == 0 {
		t.Fatalf("implausible heap %+v", h)
	}

	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	if _, err := ScrapeGoHeap(context.Background(), notFound.URL); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("a 404: %v", err)
	}
}
