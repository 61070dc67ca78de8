package sqlite

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// FuzzListDevices feeds ListDevices the filter fields an API client
// controls. The SQL is built from them, so besides not failing, every
// result must match the filter exactly: anything else would mean input
// leaked into the query text.
func FuzzListDevices(f *testing.F) {
	st, err := Open(context.Background(), filepath.Join(f.TempDir(), "fuzz.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	ctx := context.Background()
	for i, d := range []struct {
		id, model string
		tags      map[string]string
	}{
		{"a1", "m1", map[string]string{"site": "lyon", "floor": "1"}},
		{"b2", "m1", map[string]string{"site": "paris"}},
		{"c3", "m2", map[string]string{"site": "lyon", "x": "' OR 1=1 --"}},
		{"d4", "' OR 1=1 --", nil},
		{"e5", "", map[string]string{"": ""}},
	} {
		dev := store.Device{ID: d.id, Model: d.model, Tags: d.tags, State: store.StateActive, CreatedAt: time.Unix(1, 0)}
		c := store.Credential{Serial: string(rune('a' + i)), SubjectKind: identity.KindDevice, SubjectID: d.id, Fingerprint: "ab", Certificate: []byte{1}}
		if err := st.CreateDevice(ctx, dev, c); err != nil {
			f.Fatal(err)
		}
	}
	if _, err := st.SetDeviceState(ctx, "b2", store.StateDisabled, "x", time.Unix(2, 0)); err != nil {
		f.Fatal(err)
	}
	all, err := st.ListDevices(ctx, store.DeviceFilter{Limit: store.MaxListLimit})
	if err != nil || len(all) != 5 {
		f.Fatalf("setup: %d devices, %v", len(all), err)
	}

	f.Add("", "", "", "", "", 0)
	f.Add("a1", "active", "m1", "site", "lyon", 2)
	f.Add("", "disabled", "", "", "", -5)
	f.Add("", "", "' OR 1=1 --", "x", "' OR 1=1 --", 5000)
	f.Add("$1", "bogus", "$2", "?", "%", 1)
	f.Fuzz(func(t *testing.T, after, state, model, tagKey, tagValue string, limit int) {
		flt := store.DeviceFilter{State: store.DeviceState(state), Model: model, After: after, Limit: limit}
		if tagKey != "" || tagValue != "" {
			flt.Tags = map[string]string{tagKey: tagValue}
		}
		ds, err := st.ListDevices(ctx, flt)
		if state != "" && !flt.State.Valid() {
			if err == nil {
				t.Fatalf("unknown state %q accepted", state)
			}
			return
		}
		if err != nil {
			t.Fatalf("ListDevices(%+v): %v", flt, err)
		}
		// The expected page, computed in Go over all devices (in ID order).
		var want []string
		for _, d := range all {
			if len(want) == flt.PageSize() {
				break
			}
			if after != "" && d.ID <= after || state != "" && d.State != flt.State || model != "" && d.Model != model {
				continue
			}
			if v, ok := d.Tags[tagKey]; flt.Tags != nil && (!ok || v != tagValue) {
				continue
			}
			want = append(want, d.ID)
		}
		var got []string
		for _, d := range ds {
			got = append(got, d.ID)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("ListDevices(%+v) = %q, want %q", flt, got, want)
		}
		for i, d := range ds {
			if i > 0 && ds[i-1].ID >= d.ID {
				t.Fatalf("results out of order: %q then %q", ds[i-1].ID, d.ID)
			}
			if after != "" && d.ID <= after {
				t.Fatalf("result %q not after cursor %q", d.ID, after)
			}
			if state != "" && d.State != flt.State || model != "" && d.Model != model {
				t.Fatalf("result %+v does not match %+v", d, flt)
			}
			for k, v := range flt.Tags {
				if got, ok := d.Tags[k]; !ok || got != v {
					t.Fatalf("result %+v lacks tag %q=%q", d, k, v)
				}
			}
		}
	})
}
