package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
)

const (
	tagName = "koanf"
	// DefaultFile is read when no file is named and it exists.
	DefaultFile = "warden.yaml"
	// maxFileSize bounds the configuration file; a real one is a few KiB,
	// and the bound keeps a mistaken --config /some/huge/file cheap.
	maxFileSize = 1 << 20
	// maxUnknownReported bounds the unknown-key errors listed per source.
	maxUnknownReported = 20
)

// LoadOptions says where Load looks.
type LoadOptions struct {
	// File is the configuration file. When empty, Load uses the --config
	// flag if it was given, else WARDEN_CONFIG from Environ, else
	// ./warden.yaml if it exists, else no file. A file that is named but
	// missing is an error; only the implicit ./warden.yaml is optional.
	File string
	// Flags are the parsed command-line flags, typically registered with
	// AddGlobalFlags and AddServeFlags. May be nil. Only flags that were
	// given on the command line (Changed) override; flags that are not
	// configuration keys are ignored.
	Flags *pflag.FlagSet
	// Environ is the environment as "NAME=value" entries: os.Environ() in
	// production. Nil means no environment, which keeps tests hermetic.
	Environ []string
}

// Load builds the configuration: Default(), then the file, then WARDEN_*
// variables, then flags, each overriding the one before key by key. It then
// makes Data and MasterKeyFile absolute and validates the result. Every
// problem found, in any source, is returned at once (errors.Join of
// *FieldError), one per line; on error the Config is nil.
func Load(opts LoadOptions) (*Config, error) {
	cfg := Default()
	schema := configSchema()
	var errs []error

	path, explicit, err := resolveFile(opts)
	if err != nil {
		errs = append(errs, err)
	}
	if path != "" {
		errs = append(errs, loadFile(&cfg, schema, path, explicit)...)
	}
	errs = append(errs, loadEnv(&cfg, schema, opts.Environ)...)
	if opts.Flags != nil {
		errs = append(errs, loadFlags(&cfg, schema, opts.Flags)...)
	}

	cfg.Hostnames = dedupe(cfg.Hostnames)
	if len(cfg.Monitor.Silence.Models) == 0 {
		// "models: []" equals the default, as "hostnames: []" does.
		cfg.Monitor.Silence.Models = nil
	}
	errs = append(errs, absolutize(&cfg)...)
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// resolveFile picks the configuration file. explicit is false only for the
// implicit ./warden.yaml.
func resolveFile(opts LoadOptions) (path string, explicit bool, err error) {
	if opts.File != "" {
		return opts.File, true, nil
	}
	if opts.Flags != nil {
		if f := opts.Flags.Lookup(FlagConfig); f != nil && f.Changed && f.Value.String() != "" {
			return f.Value.String(), true, nil
		}
	}
	for _, kv := range opts.Environ {
		if v, ok := strings.CutPrefix(kv, EnvConfig+"="); ok && v != "" {
			// The last entry wins, as it does for keys in the env provider.
			path, explicit = v, true
		}
	}
	if explicit {
		return path, true, nil
	}
	switch _, err := os.Stat(DefaultFile); {
	case err == nil:
		return DefaultFile, false, nil
	case errors.Is(err, fs.ErrNotExist):
		return "", false, nil
	default:
		return "", false, &FieldError{Source: DefaultFile, Reason: "cannot check for the default configuration file: " + errText(err), Err: err}
	}
}

// loadFile reads the YAML file through koanf and decodes it over cfg.
func loadFile(cfg *Config, schema *schemaNode, path string, explicit bool) []error {
	fail := func(reason string, err error) []error {
		return []error{&FieldError{Source: path, Reason: reason, Err: err}}
	}
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && explicit {
			return fail("configuration file not found; check --config or "+EnvConfig, err)
		}
		return fail("cannot read the configuration file: "+errText(err), err)
	}
	if !st.Mode().IsRegular() {
		return fail("not a regular file; --config and "+EnvConfig+" must name a YAML file", nil)
	}
	if st.Size() > maxFileSize {
		return fail(fmt.Sprintf("file is %d bytes; a configuration file may be at most %s", st.Size(), ByteSize(maxFileSize)), nil)
	}

	k := koanf.New(".")
	if err := k.Load(file.Provider(path), yaml.Parser()); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return fail("cannot read the configuration file: "+errText(err), err)
		}
		return yamlErrors(path, err)
	}
	return decodeSource(k, cfg, schema, source{kind: sourceFile, path: path})
}

// yamlLine matches the position yaml.v3 puts in its messages.
var yamlLine = regexp.MustCompile(`^\s*(?:yaml: )?line (\d+): (.*)$`)

// yamlErrors turns a YAML parse error into file:line messages, one per
// problem the parser reported.
func yamlErrors(path string, err error) []error {
	var out []error
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line == "yaml: unmarshal errors:" {
			continue
		}
		src, msg := path, strings.TrimPrefix(line, "yaml: ")
		if m := yamlLine.FindStringSubmatch(line); m != nil {
			src, msg = path+":"+m[1], m[2]
		}
		if strings.HasPrefix(msg, "cannot unmarshal ") && strings.HasSuffix(msg, "into map[string]interface {}") {
			msg = "the file must be a YAML mapping of keys to values (see warden.example.yaml)"
		}
		out = append(out, &FieldError{Source: src, Reason: "invalid YAML: " + msg, Err: err})
	}
	if len(out) == 0 {
		out = append(out, &FieldError{Source: path, Reason: "invalid YAML: " + err.Error(), Err: err})
	}
	return out
}

// loadEnv reads WARDEN_* variables through koanf's env provider. Variables
// that name no key are reported, not ignored: WARDEN_MQTTS_ADDR (one
// underscore) would otherwise silently leave the default in place.
func loadEnv(cfg *Config, schema *schemaNode, environ []string) []error {
	leaves := schema.leaves("")
	isLeaf := make(map[string]bool, len(leaves))
	names := make([]string, 0, len(leaves)+2)
	for _, l := range leaves {
		isLeaf[l] = true
		names = append(names, envName(l))
	}
	names = append(names, EnvConfig, EnvDeviceID)

	var unknown []string
	k := koanf.New(".")
	p := env.Provider(".", env.Opt{
		Prefix:      envPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(name, value string) (string, any) {
			if isEnvAllowed(name) {
				return "", nil
			}
			key, ok := envKey(name)
			if !ok || !isLeaf[key] {
				unknown = append(unknown, name)
				return "", nil
			}
			return key, value
		},
	})
	if err := k.Load(p, nil); err != nil {
		return []error{&FieldError{Source: "environment", Reason: "cannot read: " + err.Error(), Err: err}}
	}

	var errs []error
	sort.Strings(unknown)
	for _, name := range slices.Compact(unknown) {
		reason := "names no configuration key"
		if key, ok := envKey(name); ok && schema.lookup(key) != nil {
			// A section such as WARDEN_MQTTS: point at its keys.
			var vars []string
			for _, l := range schema.lookup(key).leaves(key) {
				vars = append(vars, envName(l))
			}
			reason = "names the section " + key + ", not a key; set " + strings.Join(vars, ", ")
		} else if s := suggest(name, names); s != "" {
			reason += "; did you mean " + s + "?"
		} else {
			reason += "; see docs/configuration.md for the list"
		}
		errs = append(errs, &FieldError{Source: "environment variable " + name, Reason: reason})
	}
	return append(errs, decodeSource(k, cfg, schema, source{kind: sourceEnv})...)
}

// loadFlags decodes the flags that were given through koanf's posflag
// provider, then appends --hostname values.
func loadFlags(cfg *Config, schema *schemaNode, fset *pflag.FlagSet) []error {
	keys := make(map[string]string)
	for _, s := range flagSpecs() {
		keys[s.name] = s.key
	}
	// Messages name the flag as given: the old name if that was used.
	names := invert(keys)
	var errs []error
	for _, a := range flagAliases() {
		old, canon := fset.Lookup(a.name), fset.Lookup(a.canonical)
		if old == nil || !old.Changed {
			continue
		}
		if canon != nil && canon.Changed {
			errs = append(errs, &FieldError{Source: "flag --" + a.name, Reason: "is the old name of --" + a.canonical + "; give only --" + a.canonical})
			continue
		}
		keys[a.name] = keys[a.canonical]
		names[keys[a.canonical]] = a.name
	}
	k := koanf.New(".")
	// With a nil koanf instance posflag skips flags that were not Changed,
	// which is exactly the precedence wanted: an untouched flag's default
	// must not override the file or the environment.
	p := posflag.ProviderWithFlag(fset, ".", nil, func(f *pflag.Flag) (string, any) {
		key, ok := keys[f.Name]
		if !ok {
			return "", nil
		}
		if v, ok := f.Value.(*durationValue); ok {
			// posflag.FlagVal would read a "duration" flag with
			// FlagSet.GetDuration, which cannot parse "30d" and whose
			// error posflag drops: hand over the parsed value instead.
			return key, *v.p
		}
		return key, posflag.FlagVal(fset, f)
	})
	if err := k.Load(p, nil); err != nil {
		return append(errs, &FieldError{Source: "flags", Reason: "cannot read: " + err.Error(), Err: err})
	}
	errs = append(errs, decodeSource(k, cfg, schema, source{kind: sourceFlags, flags: names})...)

	if f := fset.Lookup(FlagHostname); f != nil && f.Changed {
		hs, err := fset.GetStringArray(FlagHostname)
		if err != nil {
			errs = append(errs, &FieldError{Source: "flag --" + FlagHostname, Reason: "must be registered as a repeatable string flag (AddServeFlags): " + err.Error(), Err: err})
		} else {
			cfg.Hostnames = append(cfg.Hostnames, hs...)
		}
	}
	return errs
}

type sourceKind int

const (
	sourceFile sourceKind = iota
	sourceEnv
	sourceFlags
)

// source says where values came from, for error messages.
type source struct {
	kind  sourceKind
	path  string            // file
	flags map[string]string // key -> flag name
}

func (s source) label(key string) string {
	switch s.kind {
	case sourceFile:
		return s.path
	case sourceEnv:
		if key == "" {
			return "environment"
		}
		return "environment variable " + envName(baseKey(key))
	default:
		if name, ok := s.flags[baseKey(key)]; ok {
			return "flag --" + name
		}
		return "flags"
	}
}

// decodeSource decodes one source's values over cfg. Decoding each source
// separately (rather than merging first) keeps precedence the same while
// letting every error name the file, variable or flag it came from.
// Only the file can hold unknown keys: environment names were checked when
// read, and flag names by the flag parser.
func decodeSource(k *koanf.Koanf, cfg *Config, schema *schemaNode, src source) []error {
	var errs []error
	foundUnknown := false
	if src.kind == sourceFile {
		var unknown []unknownKey
		findUnknown(k.Raw(), schema, "", schema, schema.allKeys(""), &unknown)
		foundUnknown = len(unknown) > 0
		for i, u := range unknown {
			if i == maxUnknownReported {
				errs = append(errs, &FieldError{Source: src.path, Reason: fmt.Sprintf("%d more unknown keys not listed", len(unknown)-i)})
				break
			}
			reason := "unknown key"
			if u.hint != "" {
				reason += "; " + u.hint
			}
			errs = append(errs, &FieldError{Source: src.path, Key: u.key, Reason: reason})
		}
	}

	dc := &mapstructure.DecoderConfig{
		DecodeHook: decodeHook(src.kind == sourceEnv),
		// The environment and flags deliver strings; the file is typed, and
		// weak typing there would turn "data: true" into a directory named 1.
		WeaklyTypedInput: src.kind != sourceFile,
		// The backstop for unknown keys: findUnknown names them precisely,
		// and this guarantees nothing unknown is ever silently dropped.
		ErrorUnused: true,
		// Keys are matched exactly: MQTTS or Data are not the keys.
		MatchName: func(mapKey, fieldName string) bool { return mapKey == fieldName },
		TagName:   tagName,
	}
	before := *cfg
	before.Hostnames = slices.Clone(cfg.Hostnames)
	err := k.UnmarshalWithConf("", cfg, koanf.UnmarshalConf{Tag: tagName, DecoderConfig: dc})
	for _, e := range flattenErrors(err) {
		var de *mapstructure.DecodeError
		if !errors.As(e, &de) {
			errs = append(errs, &FieldError{Source: src.label(""), Reason: e.Error(), Err: e})
			continue
		}
		inner := de.Unwrap()
		if foundUnknown && inner != nil && strings.HasPrefix(inner.Error(), "has invalid keys: ") {
			continue // already reported, with full paths and hints
		}
		key := de.Name()
		// A value that failed to decode may be half-written (a list with
		// an empty element); put back what the lower layers said, so that
		// Validate does not report the same mistake a second time.
		restore(cfg, &before, baseKey(key))
		raw := k.Get(key)
		errs = append(errs, &FieldError{
			Source: src.label(key),
			Key:    key,
			Value:  showRaw(raw),
			Reason: decodeReason(key, inner, schema, raw),
			Err:    de,
		})
	}
	return errs
}

// flattenErrors expands mapstructure's result (a wrapped errors.Join tree)
// into its DecodeError leaves.
func flattenErrors(err error) []error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*mapstructure.DecodeError); ok {
		return []error{err}
	}
	switch w := err.(type) {
	case interface{ Unwrap() []error }:
		var out []error
		for _, e := range w.Unwrap() {
			out = append(out, flattenErrors(e)...)
		}
		return out
	case interface{ Unwrap() error }:
		if inner := w.Unwrap(); inner != nil {
			return flattenErrors(inner)
		}
	}
	return []error{err}
}

// decodeReason rewrites a mapstructure error in the terms of the file.
// raw is the value as the source gave it, nil if unknown.
func decodeReason(key string, inner error, schema *schemaNode, raw any) string {
	var he *hookError
	var ut *mapstructure.UnconvertibleTypeError
	var pe *mapstructure.ParseError
	switch {
	case inner == nil:
		return "cannot be decoded"
	case errors.As(inner, &he):
		return he.reason
	case errors.As(inner, &ut):
		return "expected " + describeType(ut.Expected.Type()) + ", got " + describeValue(ut.Value)
	case errors.As(inner, &pe):
		return "expected " + describeType(pe.Expected.Type())
	}
	switch n := schema.lookup(baseKey(key)); {
	case n == nil:
		return inner.Error()
	case n.children != nil:
		return "expected a mapping with the keys " + strings.Join(n.order, ", ")
	case raw != nil && key == baseKey(key):
		return "expected " + describeType(n.typ) + ", got " + describeValue(raw)
	}
	return inner.Error()
}

func describeType(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration with a unit, such as 10s, 5m, 1h30m or 30d"
	case t == byteSizeType:
		return "a size, in bytes or with a unit, such as 65536, 64KiB or 1MiB"
	case t == stringSliceType:
		return "a list of strings"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "a whole number"
	case reflect.Float64, reflect.Float32:
		return "a number"
	case reflect.Struct:
		return "a mapping"
	}
	return t.String()
}

func describeValue(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return "a whole number"
	case float32, float64:
		return "a number"
	case map[string]any, map[any]any:
		return "a mapping"
	case []any:
		return "a list"
	case time.Time:
		return "a date (quote it to make it a string)"
	}
	return fmt.Sprintf("%T", v)
}

// hookError is a decode failure with a message written for operators.
type hookError struct{ reason string }

func (e *hookError) Error() string { return e.reason }

// decodeHook converts durations and sizes with messages that say what to
// write, and refuses lossy number conversions that mapstructure would
// otherwise make silently (1.5 into an int, 10 into 10ns).
func decodeHook(splitLists bool) mapstructure.DecodeHookFuncType {
	return func(from, to reflect.Type, data any) (any, error) {
		switch to {
		case durationType:
			return toDuration(from, data)
		case byteSizeType:
			return toByteSize(from, data)
		case modelHeartbeatsType:
			if s, ok := data.(string); ok && splitLists {
				// WARDEN_MONITOR__SILENCE__MODELS=sensor-v2=6h,gateway=0s
				return parseModelHeartbeats(s)
			}
			return data, nil
		case stringSliceType:
			if s, ok := data.(string); ok && splitLists {
				// WARDEN_HOSTNAMES=a.example,b.example
				var out []string
				for _, part := range strings.Split(s, ",") {
					if part = strings.TrimSpace(part); part != "" {
						out = append(out, part)
					}
				}
				return out, nil
			}
			return data, nil
		}
		if to.Kind() == reflect.Int {
			switch x := data.(type) {
			case float64:
				return wholeNumber(x)
			case float32:
				return wholeNumber(float64(x))
			case uint64:
				if x > math.MaxInt64 {
					return nil, &hookError{"too large"}
				}
			case uint:
				if uint64(x) > math.MaxInt64 {
					return nil, &hookError{"too large"}
				}
			}
		}
		return data, nil
	}
}

func wholeNumber(f float64) (int64, error) {
	if f != math.Trunc(f) || math.IsNaN(f) {
		return 0, &hookError{"expected a whole number"}
	}
	if f < math.MinInt64 || f >= math.MaxInt64 {
		return 0, &hookError{"too large"}
	}
	return int64(f), nil
}

const durationHelp = "write a number with a unit: 10s, 5m, 1h30m, 30d, 1d12h"

func toDuration(from reflect.Type, data any) (any, error) {
	if from == durationType {
		return data, nil
	}
	switch x := data.(type) {
	case string:
		d, err := ParseDuration(x)
		if err != nil {
			return nil, &hookError{"not a duration (" + err.Error() + "); " + durationHelp}
		}
		return d, nil
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64:
		// 0 is unambiguous; any other bare number would be nanoseconds,
		// which is never what was meant.
		if v := reflect.ValueOf(x); v.IsZero() {
			return time.Duration(0), nil
		}
		return nil, &hookError{"a duration needs a unit; " + durationHelp}
	}
	return data, nil
}

func toByteSize(from reflect.Type, data any) (any, error) {
	if from == byteSizeType {
		return data, nil
	}
	const help = "write bytes (65536) or a whole number with a unit: 64KiB, 1MiB"
	switch x := data.(type) {
	case string:
		v, err := ParseByteSize(x)
		if err != nil {
			return nil, &hookError{"not a size (" + err.Error() + "); " + help}
		}
		return v, nil
	case float64:
		n, err := wholeNumber(x)
		if err != nil {
			return nil, &hookError{"not a whole number of bytes (" + err.Error() + "); " + help}
		}
		return ByteSize(n), nil
	case uint64:
		if x > math.MaxInt64 {
			return nil, &hookError{"too large"}
		}
		return ByteSize(x), nil
	case int:
		return ByteSize(x), nil
	case int64:
		return ByteSize(x), nil
	}
	return data, nil
}

// restore copies the field at key from before into cfg.
func restore(cfg, before *Config, key string) {
	if key == "" {
		return
	}
	dst, ok := fieldByKey(reflect.ValueOf(cfg).Elem(), key)
	src, ok2 := fieldByKey(reflect.ValueOf(before).Elem(), key)
	if ok && ok2 {
		dst.Set(src)
	}
}

// absolutize makes the paths absolute so that nothing depends on the
// working directory after Load (a daemon may chdir, a hook may run
// elsewhere).
func absolutize(cfg *Config) []error {
	var errs []error
	for _, p := range []struct {
		key string
		v   *string
	}{{"data", &cfg.Data}, {"master_key_file", &cfg.MasterKeyFile}, {"monitor.webhook.secret_file", &cfg.Monitor.Webhook.SecretFile}} {
		if *p.v == "" || strings.ContainsRune(*p.v, 0) {
			continue // Validate reports it
		}
		abs, err := filepath.Abs(*p.v)
		if err != nil {
			errs = append(errs, &FieldError{Key: p.key, Value: quote(*p.v), Reason: "cannot make the path absolute: " + errText(err), Err: err})
			continue
		}
		*p.v = abs
	}
	return errs
}

// dedupe drops repeated hostnames (a flag repeating one from the file) and
// turns an empty list into nil, so "hostnames: []" equals the default.
func dedupe(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	seen := make(map[string]bool, len(s))
	out := s[:0:0]
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func invert(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[v] = k
	}
	return out
}

// errText is an error's message without the path os errors repeat, since
// the path is already the FieldError's source.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
