package bench

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func stormResults() (warden, mosq, bare Result) {
	warden = Result{Scenario: "storm", Subject: "warden", Parameters: map[string]any{"devices": 15000, "sources": 8}}
	warden.Add(MetricHandshakesPerSecond, 1890, UnitPerSecond, HigherIsBetter)
	warden.AddDuration(MetricServerCPUPerHandshake, 812*time.Microsecond, UnitMicros, LowerIsBetter)
	warden.AddDuration("time_to_all_connected", 7930*time.Millisecond, UnitSeconds, LowerIsBetter)
	mosq = Result{Scenario: "storm", Subject: "mosquitto"}
	mosq.Add(MetricHandshakesPerSecond, 1000, UnitPerSecond, HigherIsBetter)
	mosq.AddDuration(MetricServerCPUPerHandshake, 900*time.Microsecond, UnitMicros, LowerIsBetter)
	bare = Result{Scenario: "storm", Subject: "tls-baseline"}
	bare.Add(MetricHandshakesPerSecond, 2000, UnitPerSecond, HigherIsBetter)
	return warden, mosq, bare
}

func TestCompare(t *testing.T) {
	w, m, b := stormResults()
	tests := []struct {
		name      string
		yardstick *Result
		metric    string
		target    float64
		want      float64
		met       *bool
		wantErr   string
	}{
		{"higher is better, met", &m, MetricHandshakesPerSecond, 1.5, 1.89, ptr(true), ""},
		{"higher is better, missed", &b, MetricHandshakesPerSecond, 0.96, 0.945, ptr(false), ""},
		{"lower is better, met", &m, MetricServerCPUPerHandshake, 1.0, 812.0 / 900, ptr(true), ""},
		{"no target", &m, MetricHandshakesPerSecond, 0, 1.89, nil, ""},
		{"missing on the yardstick", &b, MetricServerCPUPerHandshake, 0, 0, nil, "tls-baseline has no metric"},
		{"missing on the subject", &m, "nonsense", 0, 0, nil, "warden has no metric"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Compare(&w, tc.yardstick, tc.metric, tc.target)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := r.Value - tc.want; d > 1e-9 || d < -1e-9 {
				t.Errorf("ratio %v, want %v", r.Value, tc.want)
			}
			if (r.Met == nil) != (tc.met == nil) || (r.Met != nil && *r.Met != *tc.met) {
				t.Errorf("met %v, want %v", r.Met, tc.met)
			}
			if r.Subject != "warden" || r.Yardstick != tc.yardstick.Subject {
				t.Errorf("names %q / %q", r.Subject, r.Yardstick)
			}
		})
	}

	zero := Result{Subject: "zero"}
	zero.Add(MetricHandshakesPerSecond, 0, UnitPerSecond, HigherIsBetter)
	if _, err := Compare(&w, &zero, MetricHandshakesPerSecond, 0); err == nil {
		t.Error("a ratio over a zero yardstick was computed")
	}
	other := Result{Subject: "other"}
	other.Add(MetricHandshakesPerSecond, 3, UnitMillis, HigherIsBetter)
	if _, err := Compare(&w, &other, MetricHandshakesPerSecond, 0); err == nil || !strings.Contains(err.Error(), "units") {
		t.Errorf("a ratio across units: %v", err)
	}
	plain := Result{Subject: "plain"}
	plain.Add("count", 3, UnitCount, "")
	if _, err := Compare(&plain, &plain, "count", 1); err == nil || !strings.Contains(err.Error(), "direction") {
		t.Errorf("a target without a direction: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestPrintTable(t *testing.T) {
	w, m, b := stormResults()
	if err := w.AddRatio(&m, MetricHandshakesPerSecond, 1.5); err != nil {
		t.Fatal(err)
	}
	if err := w.AddRatio(&b, MetricHandshakesPerSecond, 0.9); err != nil {
		t.Fatal(err)
	}
	if err := w.AddRatio(&m, MetricServerCPUPerHandshake, 1); err != nil {
		t.Fatal(err)
	}
	w.Notes = append(w.Notes, "Warden negotiated X25519MLKEM768, Mosquitto X25519")
	var out bytes.Buffer
	if err := PrintTable(&out, []Result{w, m, b}); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{
		"storm     warden        devices=15000 sources=8",
		"1 890  /s",
		"812  µs",
		"7.93  s",
		"warden / mosquitto",
		"≥ 1.50  yes",
		"≥ 0.90  yes",
		"≤ 1.00  yes",
		"note (storm, warden): Warden negotiated X25519MLKEM768",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("table lacks %q:\n%s", want, text)
		}
	}
	// The VALUE column is right-aligned: every metric row's value ends
	// where the header's VALUE does.
	lines := strings.Split(text, "\n")
	header := []rune(lines[0])
	end := utf8.RuneCountInString(lines[0][:strings.Index(lines[0], "VALUE")]) + len("VALUE")
	for _, l := range lines[1:] {
		if l == "" {
			break
		}
		r := []rune(l)
		if len(r) <= end || r[end-1] == ' ' || r[end] != ' ' {
			t.Errorf("value not right-aligned under %q in %q\n%s", string(header), l, text)
		}
	}
}

func TestFormatValue(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		want string
	}{
		{15000, "15 000"},
		{1234567.8, "1 234 568"},
		{-2500, "-2 500"},
		{812.4, "812"},
		{42.25, "42.2"},
		{3.14159, "3.14"},
		{0, "0"},
		{7, "7"},
		{0.01234, "0.0123"},
		{0.0000123, "1.23e-05"},
	} {
		if got := formatValue(tc.v); got != tc.want {
			t.Errorf("formatValue(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

func TestWriteJSON(t *testing.T) {
	w, m, _ := stormResults()
	if err := w.AddRatio(&m, MetricHandshakesPerSecond, 1.5); err != nil {
		t.Fatal(err)
	}
	w.Samples = []Sample{{Elapsed: time.Second, Stats: Stats{PID: 1, RSS: 1 << 20}}}
	path := filepath.Join(t.TempDir(), "bench.json")
	if err := WriteJSON(path, []Result{w, m}); err != nil {
		t.Fatal(err)
	}
	rep, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 2 || rep.Host.CPUs == 0 || rep.Host.GoVersion == "" || rep.Generated.IsZero() {
		t.Fatalf("report %+v", rep)
	}
	got := rep.Results[0]
	if got.Subject != "warden" || len(got.Metrics) != 3 || len(got.Ratios) != 1 || got.Ratios[0].Met == nil || !*got.Ratios[0].Met {
		t.Fatalf("result did not survive the round trip: %+v", got)
	}
	if got.Parameters["devices"] != float64(15000) {
		t.Errorf("parameters %v", got.Parameters)
	}
	if len(got.Samples) != 1 || got.Samples[0].Stats.RSS != 1<<20 {
		t.Errorf("samples %+v", got.Samples)
	}
}

func TestCPUModel(t *testing.T) {
	cpuinfo := "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n"
	if got := cpuModel([]byte(cpuinfo)); got != "AMD EPYC 7B13" {
		t.Errorf("cpuModel = %q", got)
	}
	if got := cpuModel([]byte("processor : 0\nCPU part : 0xd0c\n")); got != "" {
		t.Errorf("cpuModel without a model name = %q", got)
	}
}
