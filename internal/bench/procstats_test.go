package bench

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A real /proc/PID/stat line (of a process named "warden"), fields 1-52.
const statLine = "12345 (warden) S 1 12345 12345 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 123456 1234567890 4321 18446744073709551615 1 1 0 0 0 0 0 0 2143420159 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"

func TestParseStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    procStat
		wantErr string
	}{
		{"plain", statLine, procStat{utime: 250, stime: 75, threads: 9}, ""},
		{"command with spaces and parentheses", strings.Replace(statLine, "(warden)", "(a) b (c) d)", 1), procStat{utime: 250, stime: 75, threads: 9}, ""},
		{"command that looks like fields", strings.Replace(statLine, "(warden)", "(S 1 2 3 4 5 6 7 8 9 10 11 99 99)", 1), procStat{utime: 250, stime: 75, threads: 9}, ""},
		{"no command", "12345 warden S 1", procStat{}, "no (command)"},
		{"truncated", "12345 (warden) S 1 12345 12345 0 -1 4194560 1234 0 0 0 250", procStat{}, "fields after the command"},
		{"no thread count", "12345 (warden) S 1 12345 12345 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0", procStat{}, "fields after the command"},
		{"bad utime", strings.Replace(statLine, " 250 ", " x ", 1), procStat{}, "field 14"},
		{"absurd stime", strings.Replace(statLine, " 75 ", " 1000000000000 ", 1), procStat{}, "field 15"},
		{"negative stime", strings.Replace(statLine, " 75 ", " -75 ", 1), procStat{}, "field 15"},
		{"bad thread count", strings.Replace(statLine, " 0 9 0 ", " 0 nine 0 ", 1), procStat{}, "field 20"},
		{"empty", "", procStat{}, "no (command)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseStat: error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseStat: %v", err)
			}
			if got != tc.want {
				t.Fatalf("parseStat = %+v, want %+v", got, tc.want)
			}
		})
	}
}

const statusText = `Name:	warden
Umask:	0022
State:	S (sleeping)
Tgid:	12345
VmPeak:	 1260000 kB
VmHWM:	   65432 kB
VmRSS:	   54321 kB
RssAnon:	   40000 kB
Threads:	9
SigQ:	0/95000
`

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    procStatus
		wantErr string
	}{
		{"plain", statusText, procStatus{rss: 54321 * 1024, hwm: 65432 * 1024, threads: 9}, ""},
		{"no trailing newline", strings.TrimSuffix(statusText, "\n"), procStatus{rss: 54321 * 1024, hwm: 65432 * 1024, threads: 9}, ""},
		{"only VmRSS", "VmRSS:\t1 kB", procStatus{rss: 1024}, ""},
		{"zombie without VmRSS", "Name:\tx\nState:\tZ (zombie)\nThreads:\t1\n", procStatus{}, "no VmRSS"},
		{"wrong unit", strings.Replace(statusText, "54321 kB", "54321 MB", 1), procStatus{}, "VmRSS"},
		{"not a number", strings.Replace(statusText, "54321 kB", "lots kB", 1), procStatus{}, "VmRSS"},
		{"overflow", strings.Replace(statusText, "54321 kB", "18446744073709551615 kB", 1), procStatus{}, "VmRSS"},
		{"bad threads", strings.Replace(statusText, "Threads:\t9", "Threads:\tnine", 1), procStatus{}, "Threads"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatus([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseStatus: error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseStatus: %v", err)
			}
			if got != tc.want {
				t.Fatalf("parseStatus = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestProcStatsSelf(t *testing.T) {
	// Burn some CPU so that the tick count is not zero.
	deadline := time.Now().Add(50 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	_ = x
	st, err := ProcStats(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.RSS < 1<<20 || st.RSS > 1<<40 {
		t.Errorf("RSS = %d bytes; not a Go test binary's", st.RSS)
	}
	if st.PeakRSS < st.RSS {
		t.Errorf("peak RSS %d < RSS %d", st.PeakRSS, st.RSS)
	}
	if st.CPU <= 0 || st.CPU != st.User+st.System {
		t.Errorf("CPU = %v (user %v, system %v) after a busy loop", st.CPU, st.User, st.System)
	}
	if st.FDs < 3 {
		t.Errorf("FDs = %d; stdin, stdout and stderr at least", st.FDs)
	}
	if st.Threads < 2 {
		t.Errorf("Threads = %d; a Go process has several", st.Threads)
	}
	if st.PID != os.Getpid() || st.At.IsZero() {
		t.Errorf("PID %d, At %v", st.PID, st.At)
	}
}

func TestProcStatsGone(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := ProcStats(cmd.Process.Pid); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("ProcStats of an exited process: %v, want an error saying it is gone", err)
	}
	if _, err := ProcStats(0); err == nil {
		t.Fatal("ProcStats(0) succeeded")
	}
}

func TestCPUPer(t *testing.T) {
	before := Stats{CPU: time.Second}
	after := Stats{CPU: 3 * time.Second}
	if got := CPUPer(before, after, 1000); got != 2*time.Millisecond {
		t.Errorf("CPUPer = %v, want 2ms", got)
	}
	if got := CPUPer(before, after, 0); got != 0 {
		t.Errorf("CPUPer with no count = %v, want 0", got)
	}
}

func TestSampler(t *testing.T) {
	s, err := StartSampler(context.Background(), SamplerOptions{PID: os.Getpid(), Interval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	series := s.Stop()
	if len(series) < 3 {
		t.Fatalf("%d samples in 100ms at 10ms", len(series))
	}
	for i := 1; i < len(series); i++ {
		if series[i].Elapsed < series[i-1].Elapsed || series[i].Stats.CPU < series[i-1].Stats.CPU {
			t.Fatalf("sample %d goes back in time or CPU: %+v after %+v", i, series[i], series[i-1])
		}
	}
	if PeakRSS(series) == 0 {
		t.Error("peak RSS of the series is 0")
	}
	if err := s.Err(); err != nil {
		t.Errorf("Err = %v", err)
	}
	if n := len(s.Stop()); n != len(series) {
		t.Errorf("a second Stop returned %d samples, the first %d", n, len(series))
	}

	// A process that exits ends the sampling with an error.
	cmd := exec.Command("sleep", "0.2")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s, err = StartSampler(context.Background(), SamplerOptions{PID: cmd.Process.Pid, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	time.Sleep(100 * time.Millisecond)
	s.Stop()
	if s.Err() == nil {
		t.Error("sampling an exited process reported no error")
	}
}
