package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"

	"github.com/warden-iot/warden/internal/sim"
)

// The storm's control group runs in a process of its own
// (`warden bench control-group`, started by Storm), at a higher CPU
// priority than the benchmark process. In one process with the storm, the
// control group's publishes waited in the load generator's own run queue
// behind hundreds of client handshakes, so its latency measured the load
// generator's saturation as much as the broker's (docs/performance.md):
// Mosquitto and Warden both showed about 400 ms. On its own, with the
// scheduler's preference, it measures what a device already connected to
// the broker sees while others reconnect: the broker's own scheduling and
// admission control. The storm's clients and the broker keep equal
// priority, so the handshake rate is measured as before.

// ControlGroupOptions configure the control-group process.
type ControlGroupOptions struct {
	Addr       string // the broker's mutual-TLS listener
	ServerName string
	RootsFile  string // PEM roots of the broker's certificate
	Classic    bool   // X25519 only
	FleetDir   string // ID.crt and ID.key for every ID
	IDs        []string
	Topic      string        // "private/%s/up/control": %s is the device ID
	Interval   time.Duration // between one device's publishes
	// Nice is the process's nice value (-20..19); below 0 needs
	// CAP_SYS_NICE (root), and without it the process stays at its
	// inherited priority and reports so.
	Nice int
}

// AddControlGroupFlags defines the control-group command's flags on fs.
func AddControlGroupFlags(fs *pflag.FlagSet, o *ControlGroupOptions) {
	fs.StringVar(&o.Addr, "addr", "", "the broker's mutual-TLS listener (host:port)")
	fs.StringVar(&o.ServerName, "server-name", "", "name to check the broker's certificate against")
	fs.StringVar(&o.RootsFile, "roots", "", "PEM file of the broker certificate's roots")
	fs.BoolVar(&o.Classic, "classic-kex", false, "offer X25519 only")
	fs.StringVar(&o.FleetDir, "fleet", "", "fleet directory holding ID.crt and ID.key")
	fs.StringSliceVar(&o.IDs, "ids", nil, "device IDs of the control group, comma-separated")
	fs.StringVar(&o.Topic, "topic", "private/%s/up/control", "topic each device publishes on; %s is its ID")
	fs.DurationVar(&o.Interval, "interval", 100*time.Millisecond, "time between one device's publishes")
	fs.IntVar(&o.Nice, "nice", -10, "nice value of the process (below 0 needs root)")
}

func (o ControlGroupOptions) args() []string {
	a := []string{"bench", "control-group", "--addr", o.Addr, "--server-name", o.ServerName, "--roots", o.RootsFile,
		"--fleet", o.FleetDir, "--ids", strings.Join(o.IDs, ","), "--topic", o.Topic,
		"--interval", o.Interval.String(), fmt.Sprintf("--nice=%d", o.Nice)}
	if o.Classic {
		a = append(a, "--classic-kex")
	}
	return a
}

// ControlReport is what the control group saw in one window (between two
// marks): QoS 1 publish-to-PUBACK latency, failed publishes, and how many
// of its connections the broker dropped (since the start).
type ControlReport struct {
	Ready    bool    `json:"ready,omitempty"`
	Priority string  `json:"priority,omitempty"` // "nice -10", or why not
	N        int     `json:"n"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
	Errors   int64   `json:"errors"`
	Dropped  int     `json:"dropped"`
	Err      string  `json:"error,omitempty"`
}

// ServeControlGroup is the control-group process: it connects every
// device, answers a ready line on out, then publishes QoS 1 on each
// device's topic every interval. Each "mark" line on in makes it write the
// window's ControlReport as one JSON line and start a new window; at the
// end of in it writes the last one and returns.
func ServeControlGroup(ctx context.Context, o ControlGroupOptions, in io.Reader, out io.Writer) error {
	enc := json.NewEncoder(out)
	priority := reniceSelf(o.Nice)
	if len(o.IDs) == 0 {
		return errors.New("bench control-group: no --ids")
	}
	pem, err := os.ReadFile(o.RootsFile)
	if err != nil {
		return fmt.Errorf("bench control-group: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("bench control-group: no PEM certificate in %s", o.RootsFile)
	}
	ep := Endpoint{Addr: o.Addr, ServerName: o.ServerName, Roots: roots, ClassicKeyExchange: o.Classic}
	f := &FleetDir{Dir: o.FleetDir}
	clients := make([]*Client, len(o.IDs))
	defer func() { CloseAll(clients) }()
	for i, id := range o.IDs {
		cert, err := tls.LoadX509KeyPair(f.CertFile(id), f.KeyFile(id))
		if err != nil {
			return fmt.Errorf("bench control-group: device %s: %w", id, err)
		}
		if clients[i], err = Dial(ctx, ep, DialOptions{ID: id, Certificate: cert, LocalAddr: sourceAddrs[i%len(sourceAddrs)]}); err != nil {
			return fmt.Errorf("bench control-group: connect %s: %w", id, err)
		}
	}

	var (
		mu   sync.Mutex
		hist sim.Histogram
		errs atomic.Int64
		wg   sync.WaitGroup
	)
	pctx, stop := context.WithCancel(ctx)
	payload := make([]byte, 64)
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := fmt.Sprintf(o.Topic, o.IDs[i])
			tick := time.NewTicker(o.Interval)
			defer tick.Stop()
			for {
				select {
				case <-pctx.Done():
					return
				case <-tick.C:
				}
				t0 := time.Now()
				cctx, cancel := context.WithTimeout(pctx, 10*time.Second)
				err := c.Publish(cctx, topic, payload, 1)
				cancel()
				if err != nil {
					if pctx.Err() == nil {
						errs.Add(1)
					}
					continue
				}
				mu.Lock()
				hist.Record(time.Since(t0))
				mu.Unlock()
			}
		}()
	}
	defer func() { stop(); wg.Wait() }()
	window := func() ControlReport {
		mu.Lock()
		l := hist.Latency()
		hist.Reset()
		mu.Unlock()
		dropped := 0
		for _, c := range clients {
			select {
			case <-c.Done():
				dropped++
			default:
			}
		}
		return ControlReport{N: int(l.Count), P50Ms: ms(l.P50), P99Ms: ms(l.P99), MaxMs: ms(l.Max), Errors: errs.Swap(0), Dropped: dropped}
	}
	if err := enc.Encode(ControlReport{Ready: true, Priority: priority}); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "mark" {
			return fmt.Errorf("bench control-group: unknown command %q (want mark)", sc.Text())
		}
		if err := enc.Encode(window()); err != nil {
			return err
		}
	}
	return enc.Encode(window())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// controlProcess is Storm's handle on a running control group.
type controlProcess struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	ready ControlReport
}

// startControlGroup runs `bin bench control-group` and waits until every
// device of the group is connected.
func startControlGroup(ctx context.Context, bin string, o ControlGroupOptions, stderr io.Writer) (*controlProcess, error) {
	cmd := exec.CommandContext(ctx, bin, o.args()...)
	cmd.Stderr = stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the control group (%s bench control-group): %w", bin, err)
	}
	c := &controlProcess{cmd: cmd, in: in, out: bufio.NewScanner(outR)}
	r, err := c.read()
	if err != nil || !r.Ready {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("the control group did not start: %v", errors.Join(err, errorIf(r.Err)))
	}
	c.ready = r
	return c, nil
}

func errorIf(s string) error {
	if s == "" {
		return nil
	}
	return errors.New(s)
}

func (c *controlProcess) read() (ControlReport, error) {
	if !c.out.Scan() {
		return ControlReport{}, errors.Join(errors.New("control group: no report (it exited)"), c.out.Err())
	}
	var r ControlReport
	if err := json.Unmarshal(c.out.Bytes(), &r); err != nil {
		return r, fmt.Errorf("control group: report %q: %w", c.out.Text(), err)
	}
	return r, nil
}

// mark ends a window and returns its report.
func (c *controlProcess) mark() (ControlReport, error) {
	if _, err := io.WriteString(c.in, "mark\n"); err != nil {
		return ControlReport{}, fmt.Errorf("control group: %w", err)
	}
	return c.read()
}

// close ends the last window, returns its report and waits for the process.
func (c *controlProcess) close() (ControlReport, error) {
	_ = c.in.Close()
	r, err := c.read()
	return r, errors.Join(err, c.cmd.Wait())
}
