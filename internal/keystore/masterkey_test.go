package keystore

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

func TestLoadOrCreateMasterKeyCreatesThenLoads(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "secrets")
	path := filepath.Join(dir, "master.key")

	key, created, err := LoadOrCreateMasterKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !created || len(key) != MasterKeySize {
		t.Fatalf("created=%v len=%d, want true and %d", created, len(key), MasterKeySize)
	}
	if bytes.Equal(key, make([]byte, MasterKeySize)) {
		t.Fatal("master key is all zeros")
	}

	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" {
		if got := info.Mode().Perm(); got != 0o600 {
			t.Errorf("key file mode %04o, want 0600", got)
		}
		dinfo, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := dinfo.Mode().Perm(); got != 0o700 {
			t.Errorf("key directory mode %04o, want 0700", got)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "warden-master-key-v1 " + base64.StdEncoding.EncodeToString(key) + "\n"
	if string(data) != want {
		t.Errorf("file content %q, want %q", data, want)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the key (temporary file left behind?)", len(entries))
	}

	again, created, err := LoadOrCreateMasterKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if created || !bytes.Equal(again, key) {
		t.Fatalf("second call: created=%v, same key=%v; want false, true", created, bytes.Equal(again, key))
	}
	loaded, err := LoadMasterKey(path)
	if err != nil || !bytes.Equal(loaded, key) {
		t.Fatalf("LoadMasterKey = %x, %v", loaded, err)
	}
}

func TestLoadOrCreateMasterKeyConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "master.key")
	const n = 8
	keys := make([][]byte, n)
	createdCount := make([]bool, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys[i], createdCount[i], errs[i] = LoadOrCreateMasterKey(path)
		}()
	}
	wg.Wait()
	created := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("call %d: %v", i, errs[i])
		}
		if !bytes.Equal(keys[i], keys[0]) {
			t.Fatalf("call %d returned a different key: a key was overwritten", i)
		}
		if createdCount[i] {
			created++
		}
	}
	if created != 1 {
		t.Fatalf("%d calls report creating the key, want exactly 1", created)
	}
}

func TestLoadMasterKeyMissing(t *testing.T) {
	_, err := LoadMasterKey(filepath.Join(t.TempDir(), "nope"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("error %v does not wrap fs.ErrNotExist", err)
	}
}

func TestLoadMasterKeyRefusesLoosePermissions(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("file modes are not enforced on Windows")
	}
	path := filepath.Join(t.TempDir(), "master.key")
	if _, _, err := LoadOrCreateMasterKey(path); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660, 0o610} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadMasterKey(path)
		if err == nil {
			t.Fatalf("mode %04o accepted", mode)
		}
		if !strings.Contains(err.Error(), "chmod 600 "+path) {
			t.Errorf("mode %04o: error %q does not tell the operator to chmod 600 %s", mode, err, path)
		}
		// LoadOrCreate must not treat this as "missing" and replace the key.
		if _, _, err := LoadOrCreateMasterKey(path); err == nil {
			t.Fatalf("LoadOrCreateMasterKey accepted mode %04o", mode)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadMasterKey(path); err != nil {
		t.Fatalf("mode 0400 refused: %v", err)
	}
}

func TestLoadMasterKeyBadFiles(t *testing.T) {
	good := base64.StdEncoding.EncodeToString(testMaster(9))
	tests := []struct {
		name    string
		content string
		wantErr string // "" means the file must load
	}{
		{"good", "warden-master-key-v1 " + good + "\n", ""},
		{"no newline", "warden-master-key-v1 " + good, ""},
		{"crlf", "warden-master-key-v1 " + good + "\r\n", ""},
		{"empty", "", "not a Warden master key file"},
		{"pem", "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n", "not a Warden master key file"},
		{"raw bytes", string(testMaster(9)), "not a Warden master key file"},
		{"other version", "warden-master-key-v2 " + good + "\n", "not a Warden master key file"},
		{"bad base64", "warden-master-key-v1 !!!notbase64!!!\n", "not valid base64"},
		{"short key", "warden-master-key-v1 " + base64.StdEncoding.EncodeToString(make([]byte, 16)) + "\n", "16 bytes, want 32"},
		{"two lines", "warden-master-key-v1 " + good + "\n" + "extra\n", "base64"},
		{"trailing space", "warden-master-key-v1 " + good + " \n", "base64"},
		{"huge", "warden-master-key-v1 " + strings.Repeat("A", 5000) + "\n", "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "master.key")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			key, err := LoadMasterKey(path)
			if tt.wantErr == "" {
				if err != nil || !bytes.Equal(key, testMaster(9)) {
					t.Fatalf("LoadMasterKey = %x, %v", key, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("loaded %x, want error containing %q", key, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q should contain %q and the path", err, tt.wantErr)
			}
			// A broken file is never replaced by a fresh key.
			if _, _, err := LoadOrCreateMasterKey(path); err == nil {
				t.Fatal("LoadOrCreateMasterKey replaced or accepted a broken file")
			}
			after, _ := os.ReadFile(path)
			if string(after) != tt.content {
				t.Fatal("broken key file was modified")
			}
		})
	}
}

func TestLoadMasterKeyDirectory(t *testing.T) {
	if _, err := LoadMasterKey(t.TempDir()); err == nil {
		t.Fatal("a directory was accepted as a master key file")
	}
}
