// Command schedlat reads a Go execution trace (for example Warden's
// /debug/pprof/trace?seconds=6 with http.pprof on) and prints how long
// goroutines waited for a CPU after becoming runnable: all of them, and
// those the network poller woke (a socket had bytes: for a broker, the
// sessions whose packets arrived), overall and per half second, with the
// collector's mark phases and stop-the-world pauses over 1 ms.
//
//	cd tools/schedlat && go run . TRACE
//
// docs/performance.md uses it on traces of `warden bench`'s storm. It is
// a module of its own so that Warden does not depend on golang.org/x/exp.
package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: schedlat TRACE (a Go execution trace, e.g. from /debug/pprof/trace?seconds=6)")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "schedlat:", err)
		os.Exit(1)
	}
}

const bucket = 500 * time.Millisecond

func run(path string, out io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := trace.NewReader(f)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var (
		first      trace.Time
		runnableAt = map[trace.GoID]trace.Time{}
		fromPoller = map[trace.GoID]bool{}
		all, net   []time.Duration
		byTime     = map[int][]time.Duration{}
		ranges     = map[string]trace.Time{}
		phases     []string
	)
	for {
		ev, err := r.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if first == 0 {
			first = ev.Time()
		}
		switch ev.Kind() {
		case trace.EventRangeBegin, trace.EventRangeActive:
			if name := ev.Range().Name; name == "GC concurrent mark phase" || strings.HasPrefix(name, "stop-the-world") {
				ranges[ev.Range().Name] = ev.Time()
			}
		case trace.EventRangeEnd:
			name := ev.Range().Name
			if t0, ok := ranges[name]; ok {
				if d := time.Duration(ev.Time() - t0); d > time.Millisecond {
					phases = append(phases, fmt.Sprintf("%6.2fs  %-38s %v", time.Duration(t0-first).Seconds(), name, d.Round(time.Microsecond)))
				}
				delete(ranges, name)
			}
		case trace.EventStateTransition:
			st := ev.StateTransition()
			if st.Resource.Kind != trace.ResourceGoroutine {
				continue
			}
			id := st.Resource.Goroutine()
			from, to := st.Goroutine()
			switch {
			case to == trace.GoRunnable:
				runnableAt[id] = ev.Time()
				// Made runnable by no goroutine, from waiting: the poller.
				fromPoller[id] = ev.Goroutine() == trace.NoGoroutine && from == trace.GoWaiting
			case from == trace.GoRunnable && to == trace.GoRunning:
				t0, ok := runnableAt[id]
				if !ok {
					continue
				}
				delete(runnableAt, id)
				d := time.Duration(ev.Time() - t0)
				all = append(all, d)
				if fromPoller[id] {
					net = append(net, d)
					b := int(time.Duration(ev.Time()-first) / bucket)
					byTime[b] = append(byTime[b], d)
				}
			}
		}
	}
	fmt.Fprintln(out, "wait for a CPU after becoming runnable:")
	fmt.Fprintf(out, "  all goroutines        %s\n", summary(all))
	fmt.Fprintf(out, "  woken by the poller   %s\n", summary(net))
	fmt.Fprintln(out, "woken by the poller, per half second:")
	for _, b := range slices.Sorted(maps.Keys(byTime)) {
		fmt.Fprintf(out, "  %5.1fs  %s\n", (time.Duration(b) * bucket).Seconds(), summary(byTime[b]))
	}
	if len(phases) > 0 {
		fmt.Fprintln(out, "collector phases and pauses over 1 ms:")
		for _, p := range phases {
			fmt.Fprintln(out, "  "+p)
		}
	}
	return nil
}

func summary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	slices.Sort(ds)
	q := func(p float64) time.Duration { return ds[int(p*float64(len(ds)-1))].Round(10 * time.Microsecond) }
	return fmt.Sprintf("n=%-6d p50 %-10v p90 %-10v p99 %-10v max %v", len(ds), q(.5), q(.9), q(.99), ds[len(ds)-1].Round(10*time.Microsecond))
}
