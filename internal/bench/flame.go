package bench

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"hash/fnv"
	"html"
	"io"
	"slices"
	"strings"

	"github.com/google/pprof/profile"
)

// FlameGraph renders a pprof profile (CPU or heap, as /debug/pprof/
// serves it) as a flame graph in SVG: one box per function on a stack,
// roots at the bottom, each box as wide as the share of the profile's
// samples that passed through it, callees on top of their callers. Hover a
// box for its function and share. sampleType picks the value to weigh
// ("cpu" for a CPU profile, "inuse_space" for a heap one); "" takes the
// profile's last. It is the picture `go tool pprof -http` draws, as a
// file that a report can link to.
func FlameGraph(w io.Writer, prof []byte, title, sampleType string) error {
	p, err := profile.Parse(bytes.NewReader(prof))
	if err != nil {
		return fmt.Errorf("flame graph: %w", err)
	}
	idx := len(p.SampleType) - 1
	if sampleType != "" {
		idx = slices.IndexFunc(p.SampleType, func(st *profile.ValueType) bool { return st.Type == sampleType })
	}
	if idx < 0 {
		return fmt.Errorf("flame graph: the profile has no %q samples", sampleType)
	}
	root := &flameNode{name: "all"}
	for _, s := range p.Sample {
		if idx >= len(s.Value) || s.Value[idx] <= 0 {
			continue
		}
		v := s.Value[idx]
		n := root
		n.value += v
		// Locations are leaf first; a location holds inlined functions
		// innermost first.
		for i := len(s.Location) - 1; i >= 0; i-- {
			lines := s.Location[i].Line
			for j := len(lines) - 1; j >= 0; j-- {
				name := "?"
				if f := lines[j].Function; f != nil {
					name = f.Name
				}
				n = n.child(name)
				n.value += v
			}
		}
	}
	if root.value == 0 {
		return errors.New("flame graph: the profile has no samples")
	}
	unit := p.SampleType[idx].Unit
	return renderFlame(w, root, title, p.SampleType[idx].Type, unit)
}

type flameNode struct {
	name     string
	value    int64
	children []*flameNode
}

func (n *flameNode) child(name string) *flameNode {
	for _, c := range n.children {
		if c.name == name {
			return c
		}
	}
	c := &flameNode{name: name}
	n.children = append(n.children, c)
	return c
}

const (
	flameWidth    = 1200.0
	flameRow      = 16.0
	flameMinWidth = 0.3 // boxes narrower than this (pixels) are left out
	flameHeader   = 40.0
)

func renderFlame(w io.Writer, root *flameNode, title, sampleType, unit string) error {
	depth := 0
	var measure func(n *flameNode, d int)
	measure = func(n *flameNode, d int) {
		depth = max(depth, d)
		for _, c := range n.children {
			if float64(c.value)/float64(root.value)*flameWidth >= flameMinWidth {
				measure(c, d+1)
			}
		}
	}
	measure(root, 0)
	height := flameHeader + float64(depth+1)*flameRow + 10
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="monospace" font-size="11">
<rect width="100%%" height="100%%" fill="#fdfdf6"/>
<text x="%.0f" y="18" text-anchor="middle" font-size="15">%s</text>
<text x="%.0f" y="33" text-anchor="middle" fill="#555">%s, %s in all; hover a box for its share</text>
`, flameWidth+20, height, flameWidth+20, height, (flameWidth+20)/2, html.EscapeString(title),
		(flameWidth+20)/2, html.EscapeString(sampleType), html.EscapeString(formatFlameValue(root.value, unit)))
	var draw func(n *flameNode, x float64, d int)
	draw = func(n *flameNode, x float64, d int) {
		width := float64(n.value) / float64(root.value) * flameWidth
		y := height - 10 - float64(d+1)*flameRow
		share := 100 * float64(n.value) / float64(root.value)
		fmt.Fprintf(&b, `<g><title>%s (%s, %.2f%%)</title><rect x="%.2f" y="%.1f" width="%.2f" height="%.0f" fill="%s" rx="2"/>`,
			html.EscapeString(n.name), html.EscapeString(formatFlameValue(n.value, unit)), share, 10+x, y, width, flameRow-1, flameColor(n.name))
		if label := fitLabel(shortName(n.name), width); label != "" {
			fmt.Fprintf(&b, `<text x="%.2f" y="%.1f">%s</text>`, 10+x+3, y+flameRow-4, html.EscapeString(label))
		}
		b.WriteString("</g>\n")
		// Children left to right by name, as flame graphs do: the
		// x-axis is not time.
		kids := slices.Clone(n.children)
		slices.SortFunc(kids, func(a, c *flameNode) int { return cmp.Compare(a.name, c.name) })
		cx := x
		for _, c := range kids {
			cw := float64(c.value) / float64(root.value) * flameWidth
			if cw >= flameMinWidth {
				draw(c, cx, d+1)
			}
			cx += cw
		}
	}
	draw(root, 0, 0)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// shortName drops the package path: "github.com/x/y/pkg.(*T).M" is
// "pkg.(*T).M".
func shortName(name string) string {
	if i := strings.LastIndex(name, "/"); i >= 0 && i < len(name)-1 {
		return name[i+1:]
	}
	return name
}

// fitLabel is the part of label that fits width pixels (about 7 per
// character at 11 px monospace), or "" when not even a few characters do.
func fitLabel(label string, width float64) string {
	n := int((width - 6) / 6.6)
	switch {
	case n < 4:
		return ""
	case len(label) <= n:
		return label
	default:
		return label[:n-2] + ".."
	}
}

// flameColor is a warm colour that depends only on the name, so one
// function has one colour across graphs; Warden's own code is greener.
func flameColor(name string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(name))
	v := h.Sum32()
	if strings.Contains(name, "warden-iot/warden") {
		return fmt.Sprintf("rgb(%d,%d,%d)", 90+v%60, 180+(v>>8)%60, 90+(v>>16)%50)
	}
	return fmt.Sprintf("rgb(%d,%d,%d)", 205+v%50, 90+(v>>8)%120, 40+(v>>16)%50)
}

func formatFlameValue(v int64, unit string) string {
	switch unit {
	case "nanoseconds":
		return fmt.Sprintf("%.2f s", float64(v)/1e9)
	case "bytes":
		return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20))
	}
	return fmt.Sprintf("%d %s", v, unit)
}
