package keystore

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/warden-iot/warden/internal/fileutil"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

// MasterKeySize is the length in bytes of a master key.
const MasterKeySize = 32

// masterKeyPrefix starts the single line of a master key file. A versioned,
// named prefix lets a wrong file (a certificate, an empty file, a key from
// another tool) fail with a clear message instead of being used as a key.
const masterKeyPrefix = "warden-master-key-v1 "

// maxMasterKeyFile bounds what LoadMasterKey reads: a real file is about 66
// bytes, so anything much larger is the wrong file.
const maxMasterKeyFile = 4096

// LoadOrCreateMasterKey loads the master key at path, or creates one if the
// file does not exist. created reports whether a new key was generated, so
// the caller can tell the operator to back it up.
//
// A new key is written atomically (temporary file, fsync, then a hard link
// that fails if path already exists), so a crash never leaves a half-written
// key and two processes starting together cannot overwrite each other's key:
// the loser loads the winner's key. Missing parent directories are created
// with mode 0700 and the file with mode 0600.
func LoadOrCreateMasterKey(path string) (key []byte, created bool, err error) {
	key, err = LoadMasterKey(path)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}

	key = make([]byte, MasterKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, false, fmt.Errorf("create master key %s: read random bytes: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("create master key %s: create its directory: %w", path, err)
	}
	line := masterKeyPrefix + base64.StdEncoding.EncodeToString(key) + "\n"
	err = writeNewFile(path, []byte(line), 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Another process created the key between our load and our write:
		// use its key, never replace it.
		key, err = LoadMasterKey(path)
		return key, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("create master key %s: %w", path, err)
	}
	return key, true, nil
}

// LoadMasterKey reads the master key file at path. Like ssh with private
// keys, it refuses a file that group or others may read. An error for a
// missing file wraps fs.ErrNotExist.
func LoadMasterKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load master key: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load master key %s: %w", path, err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("load master key %s: not a regular file (mode %s)", path, info.Mode())
	}
	if runtime.GOOS != "windows" && info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load master key %s: the file is accessible by group or others (mode %04o); restrict it with: chmod 600 %s", path, info.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxMasterKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("load master key %s: %w", path, err)
	}
	key, err := parseMasterKey(data)
	if err != nil {
		return nil, fmt.Errorf("load master key %s: %w", path, err)
	}
	return key, nil
}

func parseMasterKey(data []byte) ([]byte, error) {
	if len(data) > maxMasterKeyFile {
		return nil, fmt.Errorf("file is larger than %d bytes, so it is not a Warden master key file", maxMasterKeyFile)
	}
	line, ok := bytes.CutSuffix(data, []byte("\n"))
	if ok {
		line, _ = bytes.CutSuffix(line, []byte("\r"))
	}
	b64, ok := bytes.CutPrefix(line, []byte(masterKeyPrefix))
	if !ok {
		return nil, fmt.Errorf("not a Warden master key file: it must be one line starting with %q", masterKeyPrefix)
	}
	key := make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	n, err := base64.StdEncoding.Strict().Decode(key, b64)
	if err != nil {
		return nil, fmt.Errorf("corrupt master key file: the key is not valid base64: %w", err)
	}
	key = key[:n]
	if len(key) != MasterKeySize {
		return nil, fmt.Errorf("corrupt master key file: the key is %d bytes, want %d", len(key), MasterKeySize)
	}
	return key, nil
}

// writeNewFile writes data to path atomically, never replacing an existing
// file (fileutil.WriteNewFileAtomic).
func writeNewFile(path string, data []byte, perm fs.FileMode) error {
	return fileutil.WriteNewFileAtomic(path, data, perm)
}
