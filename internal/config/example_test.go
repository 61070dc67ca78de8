package config

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite warden.example.yaml from Example()")

// exampleFile is the repository copy of Example().
const exampleFile = "../../warden.example.yaml"

func TestExampleFileMatches(t *testing.T) {
	if *update {
		if err := os.WriteFile(exampleFile, []byte(Example()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(exampleFile)
	if err != nil {
		t.Fatalf("read %s: %v (run: go test ./internal/config -run TestExampleFileMatches -update)", exampleFile, err)
	}
	if string(got) != Example() {
		t.Errorf("%s differs from Example(); run: go test ./internal/config -run TestExampleFileMatches -update", exampleFile)
	}
}

// The example documents the defaults: it loads, validates, and yields
// exactly Default().
func TestExampleLoadsToDefault(t *testing.T) {
	dir := hermetic(t)
	c := mustLoad(t, LoadOptions{File: writeFile(t, Example())})
	want := Default()
	want.Data = filepath.Join(dir, "warden-data")
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("example loads to %+v\nwant %+v", *c, want)
	}
}

// Every key appears in the example (mqtts.path is rejected by Validate and
// so deliberately absent) and in the docs table with its variable and flag.
func TestEveryKeyDocumented(t *testing.T) {
	docs, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	flagOf := make(map[string]string)
	for _, s := range flagSpecs() {
		flagOf[s.key] = s.name
	}
	flagOf["hostnames"] = FlagHostname
	for _, key := range configSchema().leaves("") {
		if key == "mqtts.path" {
			continue
		}
		if !strings.Contains(string(docs), "| `"+key+"` | `"+envName(key)+"` |") {
			t.Errorf("docs/configuration.md has no table row for %s with %s", key, envName(key))
		}
		if f, ok := flagOf[key]; ok && !strings.Contains(string(docs), "`--"+f) {
			t.Errorf("docs/configuration.md does not mention --%s", f)
		}
		leaf := key[strings.LastIndexByte(key, '.')+1:]
		if !strings.Contains(Example(), "\n"+leaf+":") && !strings.Contains(Example(), " "+leaf+":") {
			t.Errorf("Example() does not set %s", key)
		}
	}
	for _, name := range []string{"--" + FlagConfig, EnvConfig, EnvDeviceID} {
		if !strings.Contains(string(docs), name) {
			t.Errorf("docs/configuration.md does not mention %s", name)
		}
	}
}

// Every flag registers, maps to a real key, and no flag or key is listed twice.
func TestFlagTable(t *testing.T) {
	schema := configSchema()
	seenKey := make(map[string]bool)
	for _, s := range flagSpecs() {
		if n := schema.lookup(s.key); n == nil || n.children != nil {
			t.Errorf("flag --%s maps to %q, which is not a key", s.name, s.key)
		}
		if seenKey[s.key] {
			t.Errorf("key %s has two flags", s.key)
		}
		seenKey[s.key] = true
	}
	fs := newFlags(t)
	for _, s := range flagSpecs() {
		if fs.Lookup(s.name) == nil {
			t.Errorf("flag --%s not registered", s.name)
		}
	}
}
