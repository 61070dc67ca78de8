package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

// File names inside the authority directory.
const (
	fileRoot          = "root.crt"
	fileRootKey       = "root.key.sealed"
	fileIssuing       = "issuing.crt"
	fileIssuingKey    = "issuing.key.sealed"
	fileServer        = "server.crt"
	fileServerKey     = "server.key.sealed"
	fileAuthority     = "authority.json"
	fileCRLDER        = "crl.der"
	fileCRLPEM        = "crl.pem"
	filePermPublic    = 0o644
	filePermSecret    = 0o600
	dirPerm           = 0o700
	recordRootKey     = "pki/root.key"
	recordIssuingKey  = "pki/issuing.key"
	recordServerKey   = "pki/server.key"
	tempPrefixPattern = ".%s.tmp-*"
)

// allFiles lists every file Init writes, in the order it writes them: the
// two certificates that make Exists true come last, so an interrupted Init
// never looks like a finished one.
func allFiles() []string {
	return []string{
		fileRootKey, fileIssuingKey, fileServerKey, fileServer,
		fileAuthority, fileCRLDER, fileCRLPEM, fileIssuing, fileRoot,
	}
}

// writeFileAtomic replaces path with data so that readers and crashes see
// either the old file or the new one, never a mix: temporary file in the same
// directory, fsync, rename, fsync of the directory.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	return writeFile(path, data, perm, false)
}

// writeNewFileAtomic is writeFileAtomic that never replaces an existing
// file: it hard-links the temporary file into place, which fails if path
// exists (the error then wraps fs.ErrExist). On file systems without hard
// links it checks for path and renames (a narrow race, never a partial file).
func writeNewFileAtomic(path string, data []byte, perm fs.FileMode) error {
	return writeFile(path, data, perm, true)
}

func writeFile(path string, data []byte, perm fs.FileMode, noClobber bool) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, fmt.Sprintf(tempPrefixPattern, filepath.Base(path)))
	if err != nil {
		return fmt.Errorf("write %s: create temporary file: %w", path, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	if err := writeAndSync(tmp, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if noClobber {
		if err := os.Link(tmpName, path); err != nil {
			if _, serr := os.Lstat(path); errors.Is(err, fs.ErrExist) || serr == nil {
				return fmt.Errorf("write %s: the file already exists: %w", path, fs.ErrExist)
			}
			if err := os.Rename(tmpName, path); err != nil {
				return fmt.Errorf("write %s: %w", path, err)
			}
		}
	} else if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}

func writeAndSync(f *os.File, data []byte, perm fs.FileMode) error {
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("set file mode: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync: %w", err)
	}
	return f.Close()
}

// syncDir makes renames, links and removals in dir durable.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
