package config

import (
	"reflect"
	"sort"
	"strings"
	"time"
)

// schemaNode is one level of the key tree derived from Config's koanf tags.
// Deriving it from the struct (rather than keeping a list by hand) means a
// new field is a known key in the file, the environment and the docs test
// the moment it is added.
type schemaNode struct {
	typ      reflect.Type
	children map[string]*schemaNode // nil for a leaf
	order    []string               // children in field order
}

var (
	durationType    = reflect.TypeOf(time.Duration(0))
	byteSizeType    = reflect.TypeOf(ByteSize(0))
	stringSliceType = reflect.TypeOf([]string(nil))
)

func buildSchema(t reflect.Type) *schemaNode {
	n := &schemaNode{typ: t}
	if t.Kind() != reflect.Struct {
		return n
	}
	n.children = make(map[string]*schemaNode)
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get(tagName), ",")
		if name == "" || name == "-" {
			continue
		}
		n.children[name] = buildSchema(f.Type)
		n.order = append(n.order, name)
	}
	return n
}

func configSchema() *schemaNode { return buildSchema(reflect.TypeOf(Config{})) }

// leaves lists every leaf key under n as dotted paths, in field order.
func (n *schemaNode) leaves(prefix string) []string {
	if n.children == nil {
		return []string{prefix}
	}
	var out []string
	for _, name := range n.order {
		out = append(out, n.children[name].leaves(joinKey(prefix, name))...)
	}
	return out
}

// allKeys lists every key under n, sections included, as dotted paths.
func (n *schemaNode) allKeys(prefix string) []string {
	var out []string
	if prefix != "" {
		out = append(out, prefix)
	}
	for _, name := range n.order {
		out = append(out, n.children[name].allKeys(joinKey(prefix, name))...)
	}
	return out
}

// lookup finds the node for a dotted key, or nil.
func (n *schemaNode) lookup(key string) *schemaNode {
	cur := n
	for _, part := range strings.Split(key, ".") {
		if cur.children == nil {
			return nil
		}
		cur = cur.children[part]
		if cur == nil {
			return nil
		}
	}
	return cur
}

func joinKey(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// envPrefix starts every variable that configures Warden.
const envPrefix = "WARDEN_"

// Environment variables that start with WARDEN_ but name no key.
const (
	// EnvConfig holds the path of the configuration file.
	EnvConfig = "WARDEN_CONFIG"
	// EnvDeviceID, EnvDeviceCert and EnvCACert are set for provisioning
	// hooks (`warden device provision --exec`), which may run warden
	// themselves.
	EnvDeviceID   = "WARDEN_DEVICE_ID"
	EnvDeviceCert = "WARDEN_DEVICE_CERT"
	EnvCACert     = "WARDEN_CA_CERT"
)

// isEnvAllowed is the explicit allow-list of WARDEN_ variables that are not
// keys. Anything else starting with WARDEN_ must name a key, so that a typo
// is an error rather than a setting silently ignored.
func isEnvAllowed(name string) bool {
	switch name {
	case EnvConfig, EnvDeviceID, EnvDeviceCert, EnvCACert:
		return true
	}
	return false
}

// envName is the variable for a key: WARDEN_ + upper case, levels
// separated by "__" so single underscores can stay inside key names.
func envName(key string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "__"))
}

// envKey maps a variable name back to a dotted key. ok is false when the
// name cannot be one Warden produced (characters other than letters, digits
// and underscores).
func envKey(name string) (key string, ok bool) {
	rest, found := strings.CutPrefix(name, envPrefix)
	if !found || rest == "" {
		return "", false
	}
	for _, r := range rest {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return "", false
		}
	}
	return strings.ToLower(strings.ReplaceAll(rest, "__", ".")), true
}

// baseKey strips a list index ("hostnames[2]" -> "hostnames") from a key
// that mapstructure reports.
func baseKey(key string) string {
	if i := strings.IndexByte(key, '['); i >= 0 {
		return key[:i]
	}
	return key
}

// suggest returns the candidate closest to s when it is close enough to be
// a plausible typo, else "".
func suggest(s string, candidates []string) string {
	if len(s) > 100 {
		return ""
	}
	best, bestD := "", -1
	for _, c := range candidates {
		d := editDistance(strings.ToLower(s), strings.ToLower(c))
		if bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	limit := 2
	if len(s) >= 16 {
		limit = 3
	}
	if bestD < 0 || bestD > limit || bestD*2 >= len(s) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// unknownKey is a key found in a source that the schema does not have.
type unknownKey struct {
	key  string // full dotted path as written
	hint string // suggestion for the fix, may be empty
}

// findUnknown walks a parsed map against the schema and lists every key the
// schema does not know, descending into unknown mappings so that the report
// names the full path a typo produced (mqtt.adr, not just mqtt).
func findUnknown(m map[string]any, n *schemaNode, prefix string, root *schemaNode, known []string, out *[]unknownKey) {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		full := joinKey(prefix, name)
		child := n.children[name]
		if child == nil {
			for _, p := range unknownPaths(full, m[name]) {
				*out = append(*out, unknownKey{key: p, hint: hintFor(p, root, known)})
			}
			continue
		}
		if child.children != nil {
			if sub, ok := m[name].(map[string]any); ok {
				findUnknown(sub, child, full, root, known, out)
			}
		}
	}
}

// unknownPaths lists the leaf paths under an unknown key.
func unknownPaths(full string, v any) []string {
	sub, ok := v.(map[string]any)
	if !ok || len(sub) == 0 {
		return []string{full}
	}
	names := make([]string, 0, len(sub))
	for k := range sub {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []string
	for _, k := range names {
		out = append(out, unknownPaths(full+"."+k, sub[k])...)
	}
	return out
}

func hintFor(path string, root *schemaNode, known []string) string {
	// A key written with dots on one line ("limits.max_packet_size: 1")
	// reaches us as a single key containing dots, which looks valid but is
	// not nested.
	if root.lookup(path) != nil {
		top, rest, _ := strings.Cut(path, ".")
		return "keys are nested, not dotted: write \"" + top + ":\" and under it, indented, \"" + rest + ":\""
	}
	if s := suggest(path, known); s != "" {
		return "did you mean " + s + "?"
	}
	return ""
}
