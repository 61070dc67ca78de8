package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat. It is
// part of the kernel's user-space ABI and 100 on every Linux architecture
// Go supports (the kernel's own HZ may differ; /proc converts). Go has no
// sysconf(_SC_CLK_TCK) without cgo, and this package must build without it.
const clockTicks = 100

// maxProcFile bounds what is read of a /proc text file: status is about
// 1.5 KiB and stat about 300 bytes.
const maxProcFile = 64 << 10

// Stats is a snapshot of one process, read from /proc.
type Stats struct {
	PID int       `json:"pid"`
	At  time.Time `json:"at"`
	// RSS is the resident set size (VmRSS) and PeakRSS its high-water
	// mark (VmHWM), in bytes.
	RSS     uint64 `json:"rss_bytes"`
	PeakRSS uint64 `json:"peak_rss_bytes"`
	// User and System are the CPU time the process has used so far, all
	// threads together; CPU is their sum.
	User   time.Duration `json:"user_ns"`
	System time.Duration `json:"system_ns"`
	CPU    time.Duration `json:"cpu_ns"`
	// FDs is the number of open file descriptors (sockets included).
	FDs     int `json:"fds"`
	Threads int `json:"threads"`
}

// CPUSince is the CPU time the process used between an earlier snapshot
// and this one; a rate's CPU cost is CPUSince divided by the count.
func (s Stats) CPUSince(earlier Stats) time.Duration {
	return s.CPU - earlier.CPU
}

// CPUPer divides the CPU time used between two snapshots by a count
// (handshakes, messages). It is 0 when the count is 0.
func CPUPer(before, after Stats, count uint64) time.Duration {
	if count == 0 {
		return 0
	}
	return after.CPUSince(before) / time.Duration(count)
}

// ProcStats reads the memory, CPU time, open files and threads of a
// process from /proc (Linux only). It fails when the process is gone.
func ProcStats(pid int) (Stats, error) {
	if pid <= 0 {
		return Stats{}, fmt.Errorf("bench: process stats: invalid PID %d", pid)
	}
	dir := "/proc/" + strconv.Itoa(pid)
	st := Stats{PID: pid, At: time.Now()}
	statText, err := readProcFile(dir + "/stat")
	if err != nil {
		return Stats{}, err
	}
	ps, err := parseStat(statText)
	if err != nil {
		return Stats{}, fmt.Errorf("bench: %s/stat: %w", dir, err)
	}
	st.User = ticksToDuration(ps.utime)
	st.System = ticksToDuration(ps.stime)
	st.CPU = st.User + st.System
	st.Threads = ps.threads

	statusText, err := readProcFile(dir + "/status")
	if err != nil {
		return Stats{}, err
	}
	status, err := parseStatus(statusText)
	if err != nil {
		return Stats{}, fmt.Errorf("bench: %s/status: %w", dir, err)
	}
	st.RSS, st.PeakRSS = status.rss, status.hwm
	if status.threads > 0 {
		st.Threads = status.threads
	}

	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return Stats{}, fmt.Errorf("bench: count the open files of process %d: %w", pid, err)
	}
	st.FDs = len(fds)
	return st, nil
}

func readProcFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("bench: %s: the process is gone (or this is not Linux): %w", path, err)
		}
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxProcFile))
	if err != nil {
		return nil, fmt.Errorf("bench: read %s: %w", path, err)
	}
	return b, nil
}

// maxTicks bounds a CPU time field: beyond it (about 146 years) the value
// is garbage, and user + system time would overflow a time.Duration.
const maxTicks = math.MaxInt64 / uint64(time.Second/clockTicks) / 2

func ticksToDuration(t uint64) time.Duration {
	return time.Duration(min(t, maxTicks)) * (time.Second / clockTicks)
}

// procStat is what parseStat takes from /proc/PID/stat.
type procStat struct {
	utime, stime uint64 // clock ticks
	threads      int
}

// parseStat reads /proc/PID/stat: "pid (comm) state ppid ...". The command
// name may hold spaces and parentheses (a process can name itself
// anything), so the fields are counted from the last ')'. utime and stime
// are fields 14 and 15, num_threads field 20 (proc(5), counting from 1).
func parseStat(b []byte) (procStat, error) {
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, errors.New("no (command) field")
	}
	fields := bytes.Fields(b[end+1:])
	// fields[0] is field 3 (state).
	const first = 3
	get := func(n int) ([]byte, error) {
		i := n - first
		if i >= len(fields) {
			return nil, fmt.Errorf("%d fields after the command name; want at least %d", len(fields), n-first+1)
		}
		return fields[i], nil
	}
	var ps procStat
	var err error
	for _, f := range []struct {
		n   int
		dst *uint64
	}{{14, &ps.utime}, {15, &ps.stime}} {
		v, gerr := get(f.n)
		if gerr != nil {
			return procStat{}, gerr
		}
		if *f.dst, err = strconv.ParseUint(string(v), 10, 64); err != nil || *f.dst > maxTicks {
			return procStat{}, fmt.Errorf("field %d: %q is not a tick count", f.n, v)
		}
	}
	v, err := get(20)
	if err != nil {
		return procStat{}, err
	}
	th, err := strconv.ParseUint(string(v), 10, 31)
	if err != nil {
		return procStat{}, fmt.Errorf("field 20: %q is not a thread count", v)
	}
	ps.threads = int(th)
	return ps, nil
}

// procStatus is what parseStatus takes from /proc/PID/status.
type procStatus struct {
	rss, hwm uint64 // bytes
	threads  int
}

// parseStatus reads the "Key:\tvalue" lines of /proc/PID/status. VmRSS is
// required (a zombie or kernel thread has none, which is an error here);
// VmHWM and Threads are taken when present.
func parseStatus(b []byte) (procStatus, error) {
	var st procStatus
	haveRSS := false
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		switch string(key) {
		case "VmRSS", "VmHWM":
			n, err := parseKB(val)
			if err != nil {
				return procStatus{}, fmt.Errorf("%s: %w", key, err)
			}
			if string(key) == "VmRSS" {
				st.rss, haveRSS = n, true
			} else {
				st.hwm = n
			}
		case "Threads":
			n, err := strconv.ParseUint(string(bytes.TrimSpace(val)), 10, 31)
			if err != nil {
				return procStatus{}, fmt.Errorf("Threads: %q is not a count", bytes.TrimSpace(val))
			}
			st.threads = int(n)
		}
	}
	if !haveRSS {
		return procStatus{}, errors.New("no VmRSS line (a zombie or kernel thread?)")
	}
	return st, nil
}

// parseKB reads "   1234 kB" as bytes.
func parseKB(v []byte) (uint64, error) {
	f := bytes.Fields(v)
	if len(f) != 2 || string(f[1]) != "kB" {
		return 0, fmt.Errorf("%q is not \"N kB\"", bytes.TrimSpace(v))
	}
	n, err := strconv.ParseUint(string(f[0]), 10, 64)
	if err != nil || n > (1<<64-1)/1024 {
		return 0, fmt.Errorf("%q is not a size in kB", f[0])
	}
	return n * 1024, nil
}

// Sample is one point of a Sampler's series.
type Sample struct {
	// Elapsed is the time since the sampler started.
	Elapsed time.Duration `json:"elapsed_ns"`
	Stats   Stats         `json:"stats"`
	// Heap is the Go heap from the metrics endpoint, when the sampler was
	// given one and the scrape worked.
	Heap *GoHeap `json:"heap,omitempty"`
}

// SamplerOptions configures a Sampler.
type SamplerOptions struct {
	// PID is the process to sample.
	PID int
	// Interval between samples; default 1s.
	Interval time.Duration
	// MetricsURL, if set, is scraped for the Go heap at every sample
	// (Warden's http listener's /metrics; Proc.MetricsURL). The scrape
	// costs the server a little CPU, so leave it empty when measuring CPU
	// per message at a fine grain.
	MetricsURL string
}

// Sampler records a process's Stats at a fixed interval, for memory and
// CPU curves over a run.
type Sampler struct {
	o      SamplerOptions
	start  time.Time
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	samples []Sample
	err     error // the first failure
}

// StartSampler takes a first sample at once and then one every interval
// until Stop or until ctx ends. A failed sample (the process exited) is
// recorded in Err and ends the sampling.
func StartSampler(ctx context.Context, o SamplerOptions) (*Sampler, error) {
	if o.PID <= 0 {
		return nil, fmt.Errorf("bench: sampler: invalid PID %d", o.PID)
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &Sampler{o: o, start: time.Now(), cancel: cancel, done: make(chan struct{})}
	if !s.sample(ctx) {
		cancel()
		close(s.done)
		return nil, s.err
	}
	go s.run(ctx)
	return s, nil
}

func (s *Sampler) run(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.o.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !s.sample(ctx) {
				return
			}
		}
	}
}

// sample takes one sample; false when sampling must stop.
func (s *Sampler) sample(ctx context.Context) bool {
	st, err := ProcStats(s.o.PID)
	if err != nil {
		s.mu.Lock()
		if s.err == nil {
			s.err = err
		}
		s.mu.Unlock()
		return false
	}
	smp := Sample{Elapsed: st.At.Sub(s.start), Stats: st}
	if s.o.MetricsURL != "" {
		sctx, cancel := context.WithTimeout(ctx, s.o.Interval)
		h, err := ScrapeGoHeap(sctx, s.o.MetricsURL)
		cancel()
		if err == nil {
			smp.Heap = &h
		} else if ctx.Err() == nil {
			s.mu.Lock()
			if s.err == nil {
				s.err = err
			}
			s.mu.Unlock()
		}
	}
	s.mu.Lock()
	s.samples = append(s.samples, smp)
	s.mu.Unlock()
	return true
}

// Samples returns a copy of the series so far.
func (s *Sampler) Samples() []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Sample(nil), s.samples...)
}

// Err returns the first failure (a sample or a scrape), if any.
func (s *Sampler) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Stop ends the sampling and returns the series. It is safe to call more
// than once.
func (s *Sampler) Stop() []Sample {
	s.cancel()
	<-s.done
	return s.Samples()
}

// PeakRSS is the largest RSS in a series (0 for none).
func PeakRSS(samples []Sample) uint64 {
	var m uint64
	for _, s := range samples {
		m = max(m, s.Stats.RSS)
	}
	return m
}
