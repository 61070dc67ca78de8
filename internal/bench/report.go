package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/warden-iot/warden/internal/fileutil"
)

// Units of metrics, as printed.
const (
	UnitPerSecond = "/s"
	UnitBytes     = "B"
	UnitSeconds   = "s"
	UnitMillis    = "ms"
	UnitMicros    = "µs"
	UnitCount     = ""
	UnitPercent   = "%"
)

// Better says which direction of a metric is an improvement; a ratio's
// target is judged by it.
type Better string

// Directions of Better.
const (
	HigherIsBetter Better = "higher"
	LowerIsBetter  Better = "lower"
)

// Names of metrics that ratios compare across subjects; scenarios use them
// so that Compare finds the same metric on both sides.
const (
	MetricHandshakesPerSecond   = "handshakes_per_second"
	MetricServerCPUPerHandshake = "server_cpu_per_handshake"
	MetricMessagesPerSecond     = "messages_per_second"
	MetricServerCPUPerMessage   = "server_cpu_per_message"
	MetricRSSPerConnection      = "rss_per_connection"
	MetricHeapPerConnection     = "heap_per_connection"
	MetricStackPerConnection    = "stack_per_connection"
	MetricGCGoalPerConnection   = "gc_goal_per_connection"
	MetricLatencyP50            = "latency_p50"
	MetricLatencyP99            = "latency_p99"
)

// Metric is one measured value with its unit.
type Metric struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Better is the direction of improvement, needed for a ratio with a
	// target; empty for counts that are neither good nor bad.
	Better Better `json:"better,omitempty"`
}

// Ratio compares one metric of a subject with the same metric of a
// yardstick measured in the same run (Warden against Mosquitto, or
// against the bare TLS server).
type Ratio struct {
	Metric    string `json:"metric"`
	Subject   string `json:"subject"`
	Yardstick string `json:"yardstick"`
	// Value is subject / yardstick.
	Value float64 `json:"value"`
	// Target, if set, is the ratio the subject must reach: at least
	// Target for a higher-is-better metric, at most for lower-is-better.
	// Met is the verdict (nil without a target).
	Target float64 `json:"target,omitempty"`
	Met    *bool   `json:"met,omitempty"`
}

// Result is one scenario run against one subject.
type Result struct {
	// Scenario is "idle", "storm", "throughput", "sealed", ...
	Scenario string `json:"scenario"`
	// Subject is what was measured: "warden", "mosquitto",
	// "tls-baseline".
	Subject string `json:"subject"`
	// Parameters are what the scenario was asked to do (devices, QoS,
	// payload size, duration).
	Parameters map[string]any `json:"parameters,omitempty"`
	Metrics    []Metric       `json:"metrics"`
	Ratios     []Ratio        `json:"ratios,omitempty"`
	// Notes say what a reader must know to read the numbers (the key
	// exchange negotiated, messages lost, server versions).
	Notes []string `json:"notes,omitempty"`
	// Samples is the server's /proc series over the run, if sampled.
	Samples []Sample `json:"samples,omitempty"`
}

// Add appends a metric.
func (r *Result) Add(name string, value float64, unit string, better Better) {
	r.Metrics = append(r.Metrics, Metric{Name: name, Value: value, Unit: unit, Better: better})
}

// AddDuration appends a duration metric in the given unit (UnitSeconds,
// UnitMillis or UnitMicros).
func (r *Result) AddDuration(name string, d time.Duration, unit string, better Better) {
	var v float64
	switch unit {
	case UnitSeconds:
		v = d.Seconds()
	case UnitMillis:
		v = float64(d) / float64(time.Millisecond)
	default:
		unit = UnitMicros
		v = float64(d) / float64(time.Microsecond)
	}
	r.Add(name, v, unit, better)
}

// Metric returns the metric named name.
func (r *Result) Metric(name string) (Metric, bool) {
	for _, m := range r.Metrics {
		if m.Name == name {
			return m, true
		}
	}
	return Metric{}, false
}

// Compare computes subject's metric over yardstick's, and judges it
// against target when target is not 0.
func Compare(subject, yardstick *Result, metric string, target float64) (Ratio, error) {
	s, ok := subject.Metric(metric)
	if !ok {
		return Ratio{}, fmt.Errorf("bench: ratio: %s %s has no metric %q", subject.Scenario, subject.Subject, metric)
	}
	y, ok := yardstick.Metric(metric)
	if !ok {
		return Ratio{}, fmt.Errorf("bench: ratio: %s %s has no metric %q", yardstick.Scenario, yardstick.Subject, metric)
	}
	if s.Unit != y.Unit {
		return Ratio{}, fmt.Errorf("bench: ratio of %s: units differ (%q and %q)", metric, s.Unit, y.Unit)
	}
	if y.Value == 0 || math.IsNaN(y.Value) || math.IsInf(y.Value, 0) {
		return Ratio{}, fmt.Errorf("bench: ratio of %s: the yardstick %s measured %v", metric, yardstick.Subject, y.Value)
	}
	r := Ratio{Metric: metric, Subject: subject.Subject, Yardstick: yardstick.Subject, Value: s.Value / y.Value, Target: target}
	if target != 0 {
		var met bool
		switch s.Better {
		case HigherIsBetter:
			met = r.Value >= target
		case LowerIsBetter:
			met = r.Value <= target
		default:
			return Ratio{}, fmt.Errorf("bench: ratio of %s: a target needs the metric's direction (Better)", metric)
		}
		r.Met = &met
	}
	return r, nil
}

// AddRatio computes Compare(r, yardstick, metric, target) and appends it.
func (r *Result) AddRatio(yardstick *Result, metric string, target float64) error {
	ratio, err := Compare(r, yardstick, metric, target)
	if err != nil {
		return err
	}
	r.Ratios = append(r.Ratios, ratio)
	return nil
}

// Metrics are the baseline's figures for a Result: the handshake rate and
// the server CPU per handshake beside it, the counts and the latency.
func (b BaselineResult) Metrics() []Metric {
	var r Result
	r.Add(MetricHandshakesPerSecond, b.PerSecond, UnitPerSecond, HigherIsBetter)
	r.AddDuration(MetricServerCPUPerHandshake, b.ServerCPUPerHandshake, UnitMicros, LowerIsBetter)
	r.Add("handshakes", float64(b.Handshakes), UnitCount, "")
	r.Add("failures", float64(b.Failures), UnitCount, LowerIsBetter)
	r.AddDuration(MetricLatencyP50, b.Latency.P50, UnitMillis, LowerIsBetter)
	r.AddDuration(MetricLatencyP99, b.Latency.P99, UnitMillis, LowerIsBetter)
	if b.Handshakes > 0 {
		r.AddDuration("client_cpu_per_handshake", b.ClientCPU/time.Duration(b.Handshakes), UnitMicros, "")
	}
	return r.Metrics
}

// Host describes the machine a report was measured on.
type Host struct {
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	Kernel    string `json:"kernel,omitempty"`
}

// Report is the JSON file WriteJSON writes.
type Report struct {
	Generated time.Time `json:"generated"`
	Host      Host      `json:"host"`
	Results   []Result  `json:"results"`
}

// ThisHost describes the machine this process runs on.
func ThisHost() Host {
	h := Host{GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU()}
	if b, err := readProcFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := readProcFile("/proc/cpuinfo"); err == nil {
		h.CPUModel = cpuModel(b)
	}
	return h
}

// cpuModel returns the first "model name" of /proc/cpuinfo (x86), or ""
// when there is none (other architectures name it differently).
func cpuModel(b []byte) string {
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		key, val, ok := bytes.Cut(line, []byte(":"))
		if ok && string(bytes.TrimSpace(key)) == "model name" {
			v := strings.TrimSpace(string(val))
			if !utf8.ValidString(v) {
				return ""
			}
			return v
		}
	}
	return ""
}

// WriteJSON writes the results with the host's description to path
// (atomically, mode 0644).
func WriteJSON(path string, results []Result) error {
	rep := Report{Generated: time.Now().UTC(), Host: ThisHost(), Results: results}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: encode the report: %w", err)
	}
	if err := fileutil.WriteFileAtomic(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench: write the report: %w", err)
	}
	return nil
}

// ReadJSON reads a report WriteJSON wrote, to compare runs.
func ReadJSON(path string) (Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Report{}, fmt.Errorf("bench: read the report: %w", err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return Report{}, fmt.Errorf("bench: %s: %w", path, err)
	}
	return rep, nil
}

// PrintTable prints the results as aligned columns: one row per metric
// with its value and unit (the scenario, subject and parameters on the
// first row of each result), then the ratios with their targets.
func PrintTable(w io.Writer, results []Result) error {
	t := table{align: []bool{false, false, false, false, true, false}}
	t.row("SCENARIO", "SUBJECT", "PARAMETERS", "METRIC", "VALUE", "UNIT")
	for _, r := range results {
		params := formatParams(r.Parameters)
		if len(r.Metrics) == 0 {
			t.row(r.Scenario, r.Subject, params, "(no metrics)", "", "")
		}
		for i, m := range r.Metrics {
			if i == 0 {
				t.row(r.Scenario, r.Subject, params, m.Name, formatValue(m.Value), m.Unit)
			} else {
				t.row("", "", "", m.Name, formatValue(m.Value), m.Unit)
			}
		}
	}
	var buf bytes.Buffer
	t.write(&buf)

	var ratios table
	ratios.align = []bool{false, false, false, true, true, false}
	ratios.row("SCENARIO", "METRIC", "SUBJECT / YARDSTICK", "RATIO", "TARGET", "MET")
	n := 0
	for _, r := range results {
		for _, q := range r.Ratios {
			target, met := "", ""
			if q.Target != 0 {
				m, _ := r.Metric(q.Metric)
				op := "≥"
				if m.Better == LowerIsBetter {
					op = "≤"
				}
				target = op + " " + formatRatio(q.Target)
			}
			if q.Met != nil {
				met = map[bool]string{true: "yes", false: "NO"}[*q.Met]
			}
			ratios.row(r.Scenario, q.Metric, q.Subject+" / "+q.Yardstick, formatRatio(q.Value), target, met)
			n++
		}
	}
	if n > 0 {
		buf.WriteString("\n")
		ratios.write(&buf)
	}
	for _, r := range results {
		for _, note := range r.Notes {
			fmt.Fprintf(&buf, "note (%s, %s): %s\n", r.Scenario, r.Subject, note)
		}
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// table collects rows and writes them with aligned columns; align[i] true
// right-aligns column i (numbers).
type table struct {
	rows  [][]string
	align []bool
}

func (t *table) row(cols ...string) { t.rows = append(t.rows, cols) }

func (t *table) write(w *bytes.Buffer) {
	var widths []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range t.rows {
		var line strings.Builder
		for i, c := range r {
			if i > 0 {
				line.WriteString("  ")
			}
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if i < len(t.align) && t.align[i] {
				line.WriteString(pad + c)
			} else if i < len(r)-1 {
				line.WriteString(c + pad)
			} else {
				line.WriteString(c)
			}
		}
		w.WriteString(strings.TrimRight(line.String(), " ") + "\n")
	}
}

// formatParams renders parameters as "k=v k=v", sorted by key.
func formatParams(p map[string]any) string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%v", k, p[k])
	}
	return strings.Join(parts, " ")
}

// formatValue prints a number for a reader: whole numbers and large
// values grouped by thousands with a space (as docs/performance.md), small
// ones with three significant digits.
func formatValue(v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return strconv.FormatFloat(v, 'f', -1, 64)
	case math.Abs(v) >= 100 || v == math.Trunc(v):
		if math.Abs(v) >= 1e15 {
			return strconv.FormatFloat(v, 'g', 4, 64)
		}
		return groupThousands(strconv.FormatFloat(math.Round(v), 'f', 0, 64))
	case math.Abs(v) >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case math.Abs(v) >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case math.Abs(v) >= 0.001:
		return strconv.FormatFloat(v, 'f', 4, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// formatRatio prints a ratio with two decimals ("0.93").
func formatRatio(v float64) string {
	if math.Abs(v) >= 100 {
		return formatValue(v)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func groupThousands(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
