package bench

import (
	"bytes"
	"encoding/xml"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/pprof/profile"
)

// testProfile is a CPU profile of main calling a (three quarters of the
// time, through an inlined helper) and b (one quarter).
func testProfile(t testing.TB) []byte {
	t.Helper()
	fn := func(id uint64, name string) *profile.Function {
		return &profile.Function{ID: id, Name: name}
	}
	mainF, aF, bF, inl := fn(1, "main.main"), fn(2, "github.com/warden-iot/warden/internal/x.A"), fn(3, "crypto/tls.(*Conn).Read"), fn(4, "x.inlined")
	loc := func(id uint64, fs ...*profile.Function) *profile.Location {
		l := &profile.Location{ID: id}
		for _, f := range fs {
			l.Line = append(l.Line, profile.Line{Function: f})
		}
		return l
	}
	lm, la, lb := loc(1, mainF), loc(2, inl, aF), loc(3, bF) // inlined: innermost first
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		Function:   []*profile.Function{mainF, aF, bF, inl},
		Location:   []*profile.Location{lm, la, lb},
		Sample: []*profile.Sample{
			{Location: []*profile.Location{la, lm}, Value: []int64{3, 300}},
			{Location: []*profile.Location{lb, lm}, Value: []int64{1, 100}},
		},
	}
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestFlameGraph(t *testing.T) {
	var out bytes.Buffer
	if err := FlameGraph(&out, testProfile(t), "storm <test>", "cpu"); err != nil {
		t.Fatal(err)
	}
	svg := out.String()
	if err := xml.Unmarshal(out.Bytes(), new(struct{ XMLName xml.Name })); err != nil {
		t.Fatalf("not well-formed XML: %v", err)
	}
	if !strings.Contains(svg, "storm &lt;test&gt;") {
		t.Error("the title is not escaped into the graph")
	}
	// Each function's box is as wide as its share of 1,200 pixels, and
	// an inlined function sits above the function it was inlined into.
	widths := map[string]float64{}
	re := regexp.MustCompile(`<title>([^<]*) \([^)]*\)</title><rect x="[0-9.]+" y="([0-9.]+)" width="([0-9.]+)"`)
	ys := map[string]float64{}
	for _, m := range re.FindAllStringSubmatch(svg, -1) {
		w, _ := strconv.ParseFloat(m[3], 64)
		y, _ := strconv.ParseFloat(m[2], 64)
		name := strings.ReplaceAll(m[1], "&#34;", `"`)
		widths[name], ys[name] = w, y
	}
	for name, want := range map[string]float64{"all": 1200, "main.main": 1200, "github.com/warden-iot/warden/internal/x.A": 900, "x.inlined": 900, "crypto/tls.(*Conn).Read": 300} {
		if got := widths[name]; got < want-0.5 || got > want+0.5 {
			t.Errorf("%s: width %.1f, want %.0f (all boxes: %v)", name, got, want, widths)
		}
	}
	if ys["x.inlined"] >= ys["github.com/warden-iot/warden/internal/x.A"] {
		t.Errorf("the inlined function is not drawn above its caller: y %v vs %v", ys["x.inlined"], ys["github.com/warden-iot/warden/internal/x.A"])
	}
	if !strings.Contains(svg, "0.00 s in all") && !strings.Contains(svg, "s in all") {
		t.Error("the total is not shown")
	}

	// Refusals.
	if err := FlameGraph(&out, testProfile(t), "", "inuse_space"); err == nil {
		t.Error("a sample type the profile lacks was accepted")
	}
	if err := FlameGraph(&out, []byte("not a profile"), "", ""); err == nil {
		t.Error("garbage was accepted as a profile")
	}
}

func TestFitLabel(t *testing.T) {
	for _, c := range []struct {
		label string
		width float64
		want  string
	}{
		{"main.main", 1000, "main.main"},
		{"main.main", 20, ""},
		{"pkg.(*Type).LongMethodName", 80, "pkg.(*Typ.."},
	} {
		if got := fitLabel(c.label, c.width); got != c.want {
			t.Errorf("fitLabel(%q, %v) = %q, want %q", c.label, c.width, got, c.want)
		}
	}
}

// FuzzFlameGraph: profile files come from the broker under test or from
// disk; whatever they hold, rendering fails cleanly or succeeds.
func FuzzFlameGraph(f *testing.F) {
	f.Add(testProfile(f))
	f.Add([]byte{0x1f, 0x8b, 0x08, 0x00})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		if err := FlameGraph(&out, data, "fuzz", ""); err == nil {
			if err := xml.Unmarshal(out.Bytes(), new(struct{ XMLName xml.Name })); err != nil {
				t.Fatalf("rendered SVG is not well-formed: %v", err)
			}
		}
	})
}
