package api

import (
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/warden-iot/warden/internal/audit"
)

// AuditPage is the answer of GET /v1/audit: entries oldest first, and the
// cursor for the next page.
type AuditPage struct {
	Entries []audit.Entry `json:"entries"`
	// Next is the after= of the next page; More says whether one exists
	// yet (a page may end at the log's end while the server appends).
	Next uint64 `json:"next"`
	More bool   `json:"more"`
}

// readAudit serves GET /v1/audit: the hash-chained audit log, paged by
// sequence number, filtered by action prefix, actor, subject, outcome
// and time; tail=1 returns the newest limit entries instead.
func (a *API) readAudit(c *call) (any, error) {
	if a.auditLog == "" {
		return nil, &httpError{http.StatusServiceUnavailable, codeInternal, "the audit log is not available on this server"}
	}
	f, err := parseAuditQuery(c.r.URL.Query())
	if err != nil {
		return nil, err
	}
	page, err := audit.Read(a.auditLog, f)
	if err != nil {
		return nil, err
	}
	if page.Entries == nil {
		page.Entries = []audit.Entry{}
	}
	return AuditPage{Entries: page.Entries, Next: page.Next, More: page.More}, nil
}

// parseAuditQuery reads the query of GET /v1/audit: each parameter at most
// once, numbers and times in range, nothing unknown.
func parseAuditQuery(q url.Values) (audit.Filter, error) {
	var f audit.Filter
	for k, vs := range q {
		if len(vs) != 1 {
			return audit.Filter{}, invalidf("query parameter %q is given %d times", k, len(vs))
		}
		v := vs[0]
		var err error
		switch k {
		case "after":
			f.AfterSeq, err = strconv.ParseUint(v, 10, 64)
		case "limit":
			f.Limit, err = strconv.Atoi(v)
			if err == nil && (f.Limit < 1 || f.Limit > audit.MaxLimit) {
				return audit.Filter{}, invalidf("limit must be 1..%d", audit.MaxLimit)
			}
		case "since":
			f.Since, err = time.Parse(time.RFC3339, v)
		case "action":
			f.Action = v
		case "actor":
			f.Actor = v
		case "subject":
			f.Subject = v
		case "outcome":
			f.Outcome = v
		case "tail":
			f.Newest, err = strconv.ParseBool(v)
		default:
			return audit.Filter{}, invalidf("unknown query parameter %q", k)
		}
		if err != nil {
			return audit.Filter{}, invalidf("query parameter %s=%q: %v", k, v, err)
		}
	}
	return f, nil
}
