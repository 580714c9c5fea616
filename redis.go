package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// DefaultPoolSize is the connection pool size of a client made by Open (per
// node for a Cluster).
//
// go-redis defaults to 10 connections per GOMAXPROCS, which is 10 to 40 in a
// small container. That is too few here: every consumer blocked in BLMOVE or
// XREADGROUP holds a connection for its whole server-side block, and handlers
// acking, publishers and Shutdown need connections of their own at the same
// moment. When the pool runs dry, commands fail with a pool timeout instead of
// waiting for a blocked call to return. Connections are dialled lazily, so an
// unused slot costs nothing. Raise it with WithPoolSize when a process runs
// more than a few dozen blocking consumers on one client.
const DefaultPoolSize = 64

// maxRetries is the MaxRetries of every client made by Open, unless the URL
// sets max_retries. One retry heals the stale pooled connection that a server
// restart or an idle-timeout leaves behind. More retries only multiply the
// duplicate writes of non-idempotent commands: go-redis retries on EOF even
// when the server already executed the command (go-redis's own default is 3).
const maxRetries = 1

// redactedPassword replaces passwords in RedactURL's output.
const redactedPassword = "xxxxx"

// unparseableURL is what RedactURL returns for a URL it cannot take apart
// safely, rather than echoing a password it could not find.
const unparseableURL = "<unparseable redis URL>"

// OpenOption configures Open.
type OpenOption func(*openConfig)

type openConfig struct {
	allowSkipVerify bool
	poolSize        int
	poolSizeSet     bool
	tlsConfig       *tls.Config
}

// WithAllowSkipVerify permits ?skip_verify=true on a rediss:// URL, which
// turns off TLS certificate verification. Without this option Open refuses
// such a URL, so a copied test URL cannot disable verification in production
// by accident.
func WithAllowSkipVerify() OpenOption {
	return func(c *openConfig) { c.allowSkipVerify = true }
}

// WithPoolSize sets the connection pool size (per node for a Cluster). It
// wins over a pool_size URL option. n must be at least 1.
// Default: DefaultPoolSize.
func WithPoolSize(n int) OpenOption {
	return func(c *openConfig) { c.poolSize, c.poolSizeSet = n, true }
}

// WithTLSConfig sets the TLS configuration of a rediss:// (or
// rediss+cluster://, rediss+sentinel://) URL, for a private CA or a client
// certificate. Open uses a clone; an empty ServerName is filled in from the
// address dialled, and MinVersion defaults to TLS 1.2. Open refuses it with a
// URL that does not use TLS.
// Default: the system roots, TLS 1.2 or newer.
func WithTLSConfig(cfg *tls.Config) OpenOption {
	return func(c *openConfig) { c.tlsConfig = cfg }
}

// Open turns a URL into a redis.UniversalClient configured for this library.
// It does no I/O: call Check to reach the server. The caller owns the client
// and closes it.
//
// Accepted URLs:
//
//	redis://[user:password@]host[:port][/db][?options]       one server
//	rediss://[user:password@]host[:port][/db][?options]      one server over TLS
//	unix://[user:password@]/path/to/redis.sock[?db=N]        one server over a Unix socket
//	redis://[user:password@]h1:7000,h2:7001,h3:7002[?options] Redis Cluster (seed nodes)
//	redis+cluster://[user:password@]host:port[?options]      Redis Cluster with one seed node
//	redis+sentinel://[user:password@]s1:26379[,s2:26379]/master-name[/db][?sentinel_password=...&options]
//
// For example:
//
//	redis://localhost:6379/0
//	rediss://app:s3cr3t@cache.example.com:6380/2?dial_timeout=3s
//	unix:///run/redis/redis.sock?db=1
//	redis://app:s3cr3t@10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000
//	rediss+cluster://app:s3cr3t@clustercfg.example.com:6379
//	redis+sentinel://:s3cr3t@sentinel-1:26379,sentinel-2:26379/mymaster/0?sentinel_password=t0p
//
// The first four forms give a *redis.Client, the Cluster forms a
// *redis.ClusterClient, and the Sentinel form a failover *redis.Client that
// asks the sentinels for the current master. A port defaults to 6379, or to
// 26379 for a sentinel. The schemes rediss+cluster:// and rediss+sentinel://
// use TLS. The user and password of a Sentinel URL authenticate to the Redis
// servers; sentinel_username and sentinel_password authenticate to the
// sentinels. A Cluster has no database number. A password with reserved
// characters (@ : / ? # % , &) must be percent-encoded: an '@' after the host
// part (in the path, the query or the fragment) is how an unencoded '/', '?'
// or '#' in a password shows, so Open refuses it with a message that quotes
// nothing of the URL; write %40 for a literal '@' there.
//
// The options are go-redis's ParseURL, ParseClusterURL and ParseFailoverURL
// query options (dial_timeout=3s, read_timeout, pool_timeout, client_name,
// protocol, max_retries, pool_size, ...); unknown options are an error.
// skip_verify=true disables certificate verification on a TLS URL and is
// refused unless WithAllowSkipVerify is given.
//
// Every client gets:
//   - a clean handshake: DisableIdentity (no CLIENT SETINFO) and maintenance
//     notifications disabled, which Redis 7.0 and miniredis reject, and which
//     would otherwise make NewClient look up DNS;
//   - MaxRetries 1 unless the URL sets max_retries (where, as in go-redis,
//     -1 disables retries and 0 means go-redis's default of 3). One retry heals
//     a stale pooled connection after a server restart; more retries multiply
//     the duplicate writes of non-idempotent commands, because go-redis
//     retries on EOF even after the server executed the command;
//   - a pool of DefaultPoolSize connections unless WithPoolSize or pool_size
//     say otherwise;
//   - ContextTimeoutEnabled off: this library's consumers block on the server
//     for about a second at a time and check their context between calls, and
//     a client-side deadline on a blocking pop would lose a value the server
//     already popped;
//   - RESP3, go-redis's default protocol (protocol=2 in the URL changes it).
//
// Open's errors wrap ErrInvalidOption and read "broker: open URL: invalid
// option: why". They name the URL with its passwords redacted (see RedactURL)
// and never contain a password.
func Open(rawURL string, opts ...OpenOption) (redis.UniversalClient, error) {
	s, err := parse(rawURL, opts)
	if err != nil {
		// errAtAfterHost quotes nothing; any other message is checked.
		if err != errAtAfterHost && containsSecret(err.Error(), rawURL) {
			err = invalid("malformed URL")
		}
		return nil, fmt.Errorf("broker: open %s: %w", RedactURL(rawURL), err)
	}
	switch {
	case s.cluster != nil:
		return redis.NewClusterClient(s.cluster), nil
	case s.failover != nil:
		return redis.NewFailoverClient(s.failover), nil
	default:
		return redis.NewClient(s.single), nil
	}
}

// openSpec is the parsed form of a URL: exactly one field is set.
type openSpec struct {
	single   *redis.Options
	cluster  *redis.ClusterOptions
	failover *redis.FailoverOptions
}

// optionError is a usage error of Open. It matches ErrInvalidOption with
// errors.Is but reads "invalid option: ...", without ErrInvalidOption's
// "broker: " prefix, which Open's own prefix would repeat. It wraps no other
// error, so no password can hide in an unwrapped cause.
type optionError struct{ msg string }

func (e *optionError) Error() string { return "invalid option: " + e.msg }

// Unwrap makes errors.Is(err, ErrInvalidOption) hold.
func (e *optionError) Unwrap() error { return ErrInvalidOption }

// invalid returns a usage error wrapping ErrInvalidOption.
func invalid(format string, args ...any) error {
	return &optionError{msg: fmt.Sprintf(format, args...)}
}

// errAtAfterHost is Open's error for an '@' after the host part. It quotes
// nothing: the text around that '@' is likely the end of a password.
var errAtAfterHost = invalid("malformed URL: '@' after the host part " +
	"(percent-encode reserved characters in the password: @ : / ? # %%)")

// fromRedis turns a go-redis parse error into one of ours. url.Parse errors
// quote the whole URL, and sometimes the password as a "port", so they become
// a fixed message. Other go-redis errors quote one option or path segment and
// are kept, subject to Open's final check for secrets.
func fromRedis(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return invalid("malformed URL (check the host, the port and the percent-encoding of the password)")
	}
	return invalid("%s", strings.TrimPrefix(err.Error(), "redis: "))
}

func parse(rawURL string, opts []OpenOption) (*openSpec, error) {
	var cfg openConfig
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.poolSizeSet && cfg.poolSize < 1 {
		return nil, invalid("pool size %d: must be at least 1", cfg.poolSize)
	}

	p, ok := splitURL(rawURL)
	if !ok {
		return nil, invalid("malformed URL: want scheme://host, for example redis://localhost:6379/0")
	}
	if p.atAfterHost {
		return nil, errAtAfterHost
	}
	var base string // the scheme go-redis understands
	kind := "single"
	switch p.scheme {
	case "redis", "rediss":
		base = p.scheme
		if len(p.hosts) > 1 {
			kind = "cluster"
		}
	case "unix":
		base = p.scheme
	case "redis+cluster", "rediss+cluster":
		base, kind = strings.TrimSuffix(p.scheme, "+cluster"), "cluster"
	case "redis+sentinel", "rediss+sentinel":
		base, kind = strings.TrimSuffix(p.scheme, "+sentinel"), "sentinel"
	default:
		return nil, invalid("unsupported URL scheme %q (want redis, rediss, unix, redis+cluster, rediss+cluster, redis+sentinel or rediss+sentinel)", p.scheme)
	}
	useTLS := base == "rediss"
	if cfg.tlsConfig != nil && !useTLS {
		return nil, invalid("WithTLSConfig needs a TLS URL (rediss://, rediss+cluster:// or rediss+sentinel://)")
	}

	q, err := url.ParseQuery(p.query)
	if err != nil {
		return nil, invalid("malformed query string")
	}
	skipVerify, err := takeSkipVerify(q, useTLS, cfg.allowSkipVerify)
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"addr", "username", "password", "context_timeout_enabled"} {
		if q.Has(name) {
			return nil, invalid("option %s is not accepted in the URL query%s", name, queryHint(name))
		}
	}
	userinfo := ""
	if p.hasUser {
		userinfo = p.userinfo + "@"
	}

	var hosts []string
	if base != "unix" {
		defPort := "6379"
		if kind == "sentinel" {
			defPort = "26379"
		}
		if len(p.hosts) == 0 {
			return nil, invalid("no host in URL")
		}
		for i, h := range p.hosts {
			hp, err := normalizeHost(h, defPort)
			if err != nil {
				return nil, invalid("host #%d: %v", i+1, err)
			}
			hosts = append(hosts, hp)
		}
	} else if len(p.hosts) > 0 {
		return nil, invalid("a unix URL takes no host: write unix:///path/to/redis.sock")
	}

	poolSize := DefaultPoolSize
	if cfg.poolSizeSet {
		poolSize = cfg.poolSize
	} else if q.Has("pool_size") {
		poolSize = 0 // keep the URL's value
	}
	retries := maxRetries
	if q.Has("max_retries") {
		retries = 0 // keep the URL's value
	}

	switch kind {
	case "cluster":
		if p.path != "" && p.path != "/" {
			return nil, invalid("a Redis Cluster has no database number: remove the URL path")
		}
		for _, h := range hosts[1:] {
			q.Add("addr", h)
		}
		o, err := redis.ParseClusterURL(base + "://" + userinfo + hosts[0] + "?" + q.Encode())
		if err != nil {
			return nil, fromRedis(err)
		}
		o.DisableIdentity = true
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		setIfNonZero(&o.PoolSize, poolSize)
		setIfNonZero(&o.MaxRetries, retries)
		if useTLS {
			// No ServerName: crypto/tls then verifies each node against the
			// address it dials, not every node against the first seed's name.
			o.TLSConfig = tlsConfig(&cfg, "", skipVerify)
		}
		return &openSpec{cluster: o}, nil

	case "sentinel":
		master, db, err := sentinelPath(p.path)
		if err != nil {
			return nil, err
		}
		for _, name := range []string{"master_name", "db", "route_by_latency", "route_randomly"} {
			if q.Has(name) {
				return nil, invalid("option %s is not accepted in a Sentinel URL%s", name, queryHint(name))
			}
		}
		sentinelUser, sentinelPass := q.Get("sentinel_username"), q.Get("sentinel_password")
		q.Del("sentinel_username")
		q.Del("sentinel_password")
		for _, h := range hosts[1:] {
			q.Add("addr", h)
		}
		o, err := redis.ParseFailoverURL(base + "://" + hosts[0] + "/" + strconv.Itoa(db) + "?" + q.Encode())
		if err != nil {
			return nil, fromRedis(err)
		}
		if p.hasUser {
			u, err := url.Parse("redis://" + userinfo + "host")
			if err != nil || u.User == nil {
				return nil, invalid("malformed user info (percent-encode reserved characters in the password)")
			}
			o.Username = u.User.Username()
			o.Password, _ = u.User.Password()
		}
		o.MasterName = master
		o.SentinelUsername, o.SentinelPassword = sentinelUser, sentinelPass
		o.DisableIdentity = true // failover clients disable maintnotifications themselves
		setIfNonZero(&o.PoolSize, poolSize)
		setIfNonZero(&o.MaxRetries, retries)
		if useTLS {
			// No ServerName: the sentinels and the master they announce are
			// different hosts; each is verified against the address dialled.
			o.TLSConfig = tlsConfig(&cfg, "", skipVerify)
		}
		return &openSpec{failover: o}, nil

	default:
		host := ""
		if base != "unix" {
			host = hosts[0]
		}
		raw := base + "://" + userinfo + host + p.path
		if len(q) > 0 {
			raw += "?" + q.Encode()
		}
		o, err := redis.ParseURL(raw)
		if err != nil {
			return nil, fromRedis(err)
		}
		o.DisableIdentity = true
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		setIfNonZero(&o.PoolSize, poolSize)
		setIfNonZero(&o.MaxRetries, retries)
		if useTLS {
			o.TLSConfig = tlsConfig(&cfg, o.TLSConfig.ServerName, skipVerify)
		}
		return &openSpec{single: o}, nil
	}
}

func setIfNonZero(dst *int, v int) {
	if v != 0 {
		*dst = v
	}
}

func queryHint(name string) string {
	switch name {
	case "addr":
		return ": list the hosts comma-separated, redis://h1:7000,h2:7001"
	case "username", "password":
		return ": put the credentials in the URL, redis://user:password@host"
	case "context_timeout_enabled":
		return ": blocking consumers rely on server-side timeouts"
	case "master_name", "db":
		return ": write redis+sentinel://host:26379/master-name/db"
	case "route_by_latency", "route_randomly":
		return ": the failover client always talks to the master"
	}
	return ""
}

// takeSkipVerify removes skip_verify from q and reports whether it asks to
// skip certificate verification, refusing it where it is not allowed.
func takeSkipVerify(q url.Values, useTLS, allowed bool) (bool, error) {
	if !q.Has("skip_verify") {
		return false, nil
	}
	v := q.Get("skip_verify")
	q.Del("skip_verify")
	var skip bool
	switch v {
	case "true", "1":
		skip = true
	case "false", "0", "":
	default:
		return false, invalid("skip_verify must be true or false")
	}
	if !useTLS {
		return false, invalid("skip_verify needs a TLS URL (rediss://)")
	}
	if skip && !allowed {
		return false, invalid("skip_verify=true disables TLS certificate verification and needs WithAllowSkipVerify")
	}
	return skip, nil
}

func tlsConfig(cfg *openConfig, serverName string, skipVerify bool) *tls.Config {
	t := &tls.Config{}
	if cfg.tlsConfig != nil {
		t = cfg.tlsConfig.Clone()
	}
	if t.MinVersion == 0 {
		t.MinVersion = tls.VersionTLS12
	}
	if t.ServerName == "" {
		t.ServerName = serverName
	}
	if skipVerify {
		t.InsecureSkipVerify = true
	}
	return t
}

// normalizeHost validates host[:port] and adds the default port. Its errors
// never quote h, which may be a password written without its '@'.
func normalizeHost(h, defPort string) (string, error) {
	if h == "" {
		return "", errors.New("empty host")
	}
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") || !strings.Contains(h, ":") {
		h += ":" + defPort
	}
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		return "", errors.New("malformed host:port")
	}
	if host == "" {
		return "", errors.New("empty host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strings.HasPrefix(port, "+") {
		return "", errors.New("invalid port")
	}
	if _, err := url.Parse("redis://" + net.JoinHostPort(host, port)); err != nil {
		return "", errors.New("invalid host")
	}
	return net.JoinHostPort(host, port), nil
}

// sentinelPath parses "/master-name[/db]".
func sentinelPath(path string) (string, int, error) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	if len(segs) > 2 || segs[0] == "" {
		return "", 0, invalid("a Sentinel URL needs the master name as its path: redis+sentinel://host:26379/master-name[/db]")
	}
	master, err := url.PathUnescape(segs[0])
	if err != nil || master == "" {
		return "", 0, invalid("malformed master name")
	}
	db := 0
	if len(segs) == 2 {
		if db, err = strconv.Atoi(segs[1]); err != nil || db < 0 {
			return "", 0, invalid("invalid database number in the path")
		}
	}
	return master, db, nil
}

// urlParts is a URL split the way url.Parse splits it, except that the host
// part may list several comma-separated hosts. Every field is raw
// (still percent-encoded).
type urlParts struct {
	scheme   string // lower-cased
	userinfo string // without the '@'
	hasUser  bool
	hosts    []string
	path     string // "" or starting with '/'
	query    string // without the '?'
	hasQuery bool
	fragment string // without the '#'
	hasFrag  bool
	// atAfterHost: an '@' in the path, query or fragment, which is what a
	// password with an unencoded '/', '?' or '#' looks like.
	atAfterHost bool
}

func splitURL(raw string) (urlParts, bool) {
	var p urlParts
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok || !validScheme(scheme) {
		return p, false
	}
	p.scheme = strings.ToLower(scheme)
	rest, p.fragment, p.hasFrag = strings.Cut(rest, "#")
	rest, p.query, p.hasQuery = strings.Cut(rest, "?")
	authority := rest
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		authority, p.path = rest[:i], rest[i:]
	}
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		p.userinfo, p.hasUser, authority = authority[:i], true, authority[i+1:]
	}
	p.atAfterHost = strings.ContainsRune(p.path, '@') || strings.ContainsRune(p.query, '@') ||
		strings.ContainsRune(p.fragment, '@')
	if authority != "" {
		p.hosts = strings.Split(authority, ",")
	}
	return p, true
}

func validScheme(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case i > 0 && (r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.'):
		default:
			return false
		}
	}
	return true
}

// isPasswordKey reports whether a query parameter carries a password
// (password, sentinel_password, and any other name containing "password").
func isPasswordKey(rawKey string) bool {
	k, err := url.QueryUnescape(rawKey)
	if err != nil {
		k = rawKey
	}
	return strings.Contains(strings.ToLower(k), "password")
}

// secrets returns the passwords of rawURL, raw and decoded.
func secrets(rawURL string) []string {
	p, ok := splitURL(rawURL)
	if !ok {
		return nil
	}
	var out []string
	add := func(raw string, unescape func(string) (string, error)) {
		if raw == "" {
			return
		}
		out = append(out, raw)
		if s, err := unescape(raw); err == nil && s != "" && s != raw {
			out = append(out, s)
		}
	}
	if _, pass, ok := strings.Cut(p.userinfo, ":"); ok {
		add(pass, url.PathUnescape)
	}
	for kv := range strings.SplitSeq(p.query, "&") {
		if k, v, _ := strings.Cut(kv, "="); isPasswordKey(k) {
			add(v, url.QueryUnescape)
		}
	}
	return out
}

func containsSecret(s, rawURL string) bool {
	for _, sec := range secrets(rawURL) {
		if strings.Contains(s, sec) {
			return true
		}
	}
	return false
}

// minScrubLen is the shortest password RedactURL also looks for inside other
// parts of the URL. A shorter one would match by chance (a password "1" in
// the port 6381), so it is replaced only where a whole part equals it.
const minScrubLen = 4

// RedactURL returns rawURL with every password replaced by "xxxxx": the
// password of the user info, and the values of the query parameters password
// and sentinel_password (and any other whose name contains "password").
//
// A password repeated elsewhere is replaced too: wherever a whole part of the
// URL (the user name, a host, a path segment, an option name or value, the
// fragment) equals it, and, for a password of four characters or more, inside
// any of those parts except option names, which are a fixed vocabulary and
// are never changed. Everything else is kept as written.
//
// A URL it cannot take apart safely gives "<unparseable redis URL>" instead of
// an echo: no scheme, a host part that is not host[:port] (which is what a
// password without its '@' looks like), or an '@' after the host part (what a
// password with an unencoded '/', '?' or '#' looks like).
func RedactURL(rawURL string) string {
	p, ok := splitURL(rawURL)
	if !ok || p.atAfterHost {
		return unparseableURL
	}
	for _, h := range p.hosts {
		if u, err := url.Parse("redis://" + h); err != nil || u.Host != h {
			return unparseableURL
		}
	}
	secs := secrets(rawURL)
	// Longest first, in one pass, so that a password containing another is
	// replaced whole and no replacement is matched again.
	slices.SortFunc(secs, func(a, b string) int { return len(b) - len(a) })
	var pairs []string
	for _, sec := range secs {
		if len(sec) >= minScrubLen {
			pairs = append(pairs, sec, redactedPassword)
		}
	}
	inner := strings.NewReplacer(pairs...)
	whole := func(s string) bool { return s != "" && slices.Contains(secs, s) }
	scrub := func(s string) string {
		if whole(s) {
			return redactedPassword
		}
		return inner.Replace(s)
	}
	scrubName := func(s string) string {
		if whole(s) {
			return redactedPassword
		}
		return s
	}

	var b strings.Builder
	b.WriteString(p.scheme)
	b.WriteString("://")
	if p.hasUser {
		user, _, hasPass := strings.Cut(p.userinfo, ":")
		b.WriteString(scrub(user))
		if hasPass {
			b.WriteString(":" + redactedPassword)
		}
		b.WriteByte('@')
	}
	for i, h := range p.hosts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(scrub(h))
	}
	for i, seg := range strings.Split(p.path, "/") {
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(scrub(seg))
	}
	if p.hasQuery {
		b.WriteByte('?')
		for i, kv := range strings.Split(p.query, "&") {
			if i > 0 {
				b.WriteByte('&')
			}
			k, v, hasValue := strings.Cut(kv, "=")
			b.WriteString(scrubName(k))
			switch {
			case isPasswordKey(k):
				b.WriteString("=" + redactedPassword)
			case hasValue:
				b.WriteString("=" + scrub(v))
			}
		}
	}
	if p.hasFrag {
		b.WriteString("#" + scrub(p.fragment))
	}
	return b.String()
}

// Check pings the server and, where CONFIG GET is allowed, logs a warning on
// log when maxmemory-policy is not noeviction: any other policy lets Redis
// evict queue and stream keys, losing messages, under memory pressure. On a
// Cluster it checks every master.
//
// CONFIG being unavailable (miniredis, a managed Redis that renames or
// disables it, an ACL user without the permission) is not an error: Check
// logs it at debug level and returns nil. Check returns an error when the
// ping fails or the connection fails during the check. log may be nil
// (silent).
func Check(ctx context.Context, c redis.UniversalClient, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("broker: check: %w", err)
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		err := cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			return checkEviction(ctx, n, log.With("addr", n.Options().Addr))
		})
		if err != nil {
			return fmt.Errorf("broker: check: %w", err)
		}
		return nil
	}
	if err := checkEviction(ctx, c, log); err != nil {
		return fmt.Errorf("broker: check: %w", err)
	}
	return nil
}

func checkEviction(ctx context.Context, c redis.Cmdable, log *slog.Logger) error {
	res, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
	if err != nil {
		var rerr redis.Error
		if errors.As(err, &rerr) { // the server refused: unknown, renamed or forbidden command
			log.DebugContext(ctx, "broker: cannot read maxmemory-policy, eviction check skipped", "err", err)
			return nil
		}
		return fmt.Errorf("config get maxmemory-policy: %w", err)
	}
	policy, ok := res["maxmemory-policy"]
	switch {
	case !ok:
		log.DebugContext(ctx, "broker: server did not report maxmemory-policy, eviction check skipped")
	case policy != "noeviction":
		log.WarnContext(ctx, "broker: maxmemory-policy is not noeviction: under memory pressure Redis may evict queue and stream keys and lose messages",
			"maxmemory-policy", policy)
	default:
		log.DebugContext(ctx, "broker: maxmemory-policy is noeviction")
	}
	return nil
}
