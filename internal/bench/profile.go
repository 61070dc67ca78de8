package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// profiler takes Go profiles of the Warden under test (started with
// http.pprof) while a scenario runs, and writes each as NAME.pb.gz (for
// `go tool pprof`) and NAME.svg (a flame graph, FlameGraph) into dir.
type profiler struct {
	dir   string
	base  string // http://host:port of Warden's http listener
	log   io.Writer
	logMu *sync.Mutex // profiles are taken concurrently (CPU and allocations at once)
}

// logf writes one line to the log, one profile at a time.
func (p *profiler) logf(format string, args ...any) {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	fmt.Fprintf(p.log, format, args...)
}

func newProfiler(dir string, p *Proc, log io.Writer) (*profiler, error) {
	if dir == "" || p == nil || p.HTTPAddr == "" {
		return nil, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("profiles: %w", err)
	}
	return &profiler{dir: dir, base: "http://" + p.HTTPAddr, log: log, logMu: new(sync.Mutex)}, nil
}

// heap writes the live heap now (after a collection), weighted by bytes
// in use.
func (p *profiler) heap(ctx context.Context, name, title string) {
	if p == nil {
		return
	}
	p.save(ctx, "/debug/pprof/heap?gc=1", name, title, "inuse_space")
}

// cpu profiles the next d in the background; wait for the returned
// channel before reading the files.
func (p *profiler) cpu(ctx context.Context, name, title string, d time.Duration) <-chan struct{} {
	return p.during(ctx, "/debug/pprof/profile", name, title, "cpu", d)
}

// allocs profiles the allocations of the next d in the background (a
// delta profile, weighted by bytes allocated); wait for the returned
// channel before reading the files.
func (p *profiler) allocs(ctx context.Context, name, title string, d time.Duration) <-chan struct{} {
	return p.during(ctx, "/debug/pprof/allocs", name, title, "alloc_space", d)
}

// during fetches the profile at path over the next d (whole seconds, at
// least one) in the background, and closes the returned channel once it
// is written.
func (p *profiler) during(ctx context.Context, path, name, title, sampleType string, d time.Duration) <-chan struct{} {
	done := make(chan struct{})
	if p == nil {
		close(done)
		return done
	}
	secs := max(int(d/time.Second), 1)
	go func() {
		defer close(done)
		p.save(ctx, fmt.Sprintf("%s?seconds=%d", path, secs), name, title, sampleType)
	}()
	return done
}

// save fetches one profile and writes it with its flame graph. A failure
// is reported in the log and does not fail the benchmark: profiles are
// what explains a figure, not the figure.
func (p *profiler) save(ctx context.Context, path, name, title, sampleType string) {
	fail := func(err error) { p.logf("profile %s: %v (the benchmark goes on)\n", name, err) }
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path, nil)
	if err != nil {
		fail(err)
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fail(err)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		fail(err)
		return
	}
	if resp.StatusCode != http.StatusOK {
		fail(fmt.Errorf("%s answered %s: %s (is http.pprof on?)", path, resp.Status, bytes.TrimSpace(body[:min(len(body), 200)])))
		return
	}
	if err := os.WriteFile(filepath.Join(p.dir, name+".pb.gz"), body, 0o644); err != nil {
		fail(err)
		return
	}
	var svg bytes.Buffer
	if err := FlameGraph(&svg, body, title, sampleType); err != nil {
		fail(err)
		return
	}
	if err := os.WriteFile(filepath.Join(p.dir, name+".svg"), svg.Bytes(), 0o644); err != nil {
		fail(err)
		return
	}
	p.logf("profile %s written to %s (.pb.gz and .svg)\n", name, filepath.Join(p.dir, name))
}
