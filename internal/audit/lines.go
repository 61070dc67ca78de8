package audit

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// The readers below hold at most about MaxLineSize bytes of a line, however
// long it is in the file: a line of MaxLineSize bytes or more (newline not
// counted) comes back with tooLong set and no content.

// lineReader reads lines forward.
type lineReader struct {
	r   *bufio.Reader
	off int64 // offset of the next line
	num int   // 1-based number of the line last returned
}

func newLineReader(r io.Reader, off int64, firstLine int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, MaxLineSize), off: off, num: firstLine - 1}
}

// line is one line of the log: its content without the newline, where it
// starts, its number, and whether it was complete (newline-terminated) and
// short enough to be an entry.
type line struct {
	text     []byte // valid until the next read
	start    int64
	num      int
	complete bool
	tooLong  bool
	chained  bool // starts like a chained entry (known even when tooLong)
}

// next returns the next line, or io.EOF after the last.
func (lr *lineReader) next() (line, error) {
	l := line{start: lr.off, num: lr.num + 1}
	b, err := lr.r.ReadSlice('\n')
	lr.off += int64(len(b))
	l.chained = bytes.HasPrefix(b, []byte(chainedPrefix))
	for errors.Is(err, bufio.ErrBufferFull) {
		l.tooLong = true
		b, err = lr.r.ReadSlice('\n')
		lr.off += int64(len(b))
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return line{}, err
	}
	if errors.Is(err, io.EOF) && len(b) == 0 && !l.tooLong {
		return line{}, io.EOF
	}
	lr.num++
	l.complete = err == nil
	if l.complete {
		b = b[:len(b)-1]
	}
	if len(b) >= MaxLineSize {
		l.tooLong = true
	}
	if !l.tooLong {
		l.text = b
	}
	return l, nil
}

// backScanner reads the complete lines of r[0:end] from the last to the
// first; end must follow a newline (or be 0).
type backScanner struct {
	r   io.ReaderAt
	off int64  // buf holds r[off : off+len(buf)]
	buf []byte // never written in place, so returned lines stay valid
	end int64  // the next line to return ends just before this offset's newline
}

const backChunk = 32 << 10

func newBackScanner(r io.ReaderAt, end int64) *backScanner {
	// The buffer starts empty just before the last newline.
	return &backScanner{r: r, off: max(end-1, 0), end: end}
}

// prev returns the line before the last one returned, or io.EOF.
func (s *backScanner) prev() (line, error) {
	if s.end <= 0 {
		return line{}, io.EOF
	}
	nl := s.end - 1 // the newline that ends this line
	if keep := nl - s.off; keep < int64(len(s.buf)) {
		s.buf = s.buf[:max(keep, 0)]
	}
	tooLong := false
	search := len(s.buf)
	for {
		if i := bytes.LastIndexByte(s.buf[:search], '\n'); i >= 0 || s.off == 0 {
			text := s.buf[i+1:]
			start := s.off + int64(i) + 1
			s.buf = s.buf[:max(i, 0)]
			s.end = start
			chained := bytes.HasPrefix(text, []byte(chainedPrefix))
			if tooLong || len(text) >= MaxLineSize {
				return line{start: start, complete: true, tooLong: true, chained: chained}, nil
			}
			return line{text: text, start: start, complete: true, chained: chained}, nil
		}
		if len(s.buf) >= MaxLineSize {
			tooLong = true
			s.buf = nil // only the line's start is still of interest
		}
		n := min(int64(backChunk), s.off)
		chunk := make([]byte, int(n)+len(s.buf))
		if _, err := s.r.ReadAt(chunk[:n], s.off-n); err != nil {
			return line{}, err
		}
		copy(chunk[n:], s.buf)
		s.buf, s.off, search = chunk, s.off-n, int(n)
	}
}

// hashPrefix is the hex SHA-256 of r[0:n], or ZeroHash when n is 0: the
// prev of entry 1 (docs/audit.md, "Legacy lines").
func hashPrefix(r io.ReaderAt, n int64) (string, error) {
	if n == 0 {
		return ZeroHash, nil
	}
	return hashRange(r, 0, n)
}
