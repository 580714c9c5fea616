package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker/internal/redistest"
)

// commonOpts are the settings every client made by Open shares.
type commonOpts struct {
	PoolSize        int
	MaxRetries      int
	DisableIdentity bool
}

func TestOpenSingle(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		url      string
		opts     []OpenOption
		network  string
		addr     string
		db       int
		user     string
		password string
		tls      bool
		skip     bool
		common   commonOpts
	}{
		{name: "plain", url: "redis://localhost:6379/2", network: "tcp", addr: "localhost:6379", db: 2,
			common: commonOpts{DefaultPoolSize, 1, true}},
		{name: "default port, credentials", url: "redis://alice:s3cr3t@10.0.0.1", network: "tcp", addr: "10.0.0.1:6379",
			user: "alice", password: "s3cr3t", common: commonOpts{DefaultPoolSize, 1, true}},
		{name: "ipv6", url: "redis://[::1]:6380/0", network: "tcp", addr: "[::1]:6380",
			common: commonOpts{DefaultPoolSize, 1, true}},
		{name: "tls, encoded password", url: "rediss://:p%40ss@cache.example.com/1", network: "tcp", addr: "cache.example.com:6379",
			db: 1, password: "p@ss", tls: true, common: commonOpts{DefaultPoolSize, 1, true}},
		{name: "tls, skip_verify allowed", url: "rediss://cache.example.com?skip_verify=true", opts: []OpenOption{WithAllowSkipVerify()},
			network: "tcp", addr: "cache.example.com:6379", tls: true, skip: true, common: commonOpts{DefaultPoolSize, 1, true}},
		{name: "tls, skip_verify false", url: "rediss://cache.example.com?skip_verify=false",
			network: "tcp", addr: "cache.example.com:6379", tls: true, common: commonOpts{DefaultPoolSize, 1, true}},
		{name: "unix", url: "unix:///tmp/redis.sock?db=3", network: "unix", addr: "/tmp/redis.sock", db: 3,
			common: commonOpts{DefaultPoolSize, 1, true}},
		{name: "unix with password", url: "unix://:s3cr3t@/tmp/redis.sock", network: "unix", addr: "/tmp/redis.sock",
			password: "s3cr3t", common: commonOpts{DefaultPoolSize, 1, true}},
		{name: "WithPoolSize", url: "redis://h", opts: []OpenOption{WithPoolSize(7)}, network: "tcp", addr: "h:6379",
			common: commonOpts{7, 1, true}},
		{name: "URL pool_size and max_retries", url: "redis://h?pool_size=9&max_retries=-1", network: "tcp", addr: "h:6379",
			common: commonOpts{9, 0, true}}, // go-redis turns -1 (no retries) into 0
		{name: "WithPoolSize wins over pool_size", url: "redis://h?pool_size=9", opts: []OpenOption{WithPoolSize(5)},
			network: "tcp", addr: "h:6379", common: commonOpts{5, 1, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Open(tt.url, tt.opts...)
			require.NoError(t, err)
			t.Cleanup(func() { _ = c.Close() })
			require.IsType(t, &redis.Client{}, c)
			o := c.(*redis.Client).Options()
			assert.Equal(t, tt.network, o.Network)
			assert.Equal(t, tt.addr, o.Addr)
			assert.Equal(t, tt.db, o.DB)
			assert.Equal(t, tt.user, o.Username)
			assert.Equal(t, tt.password, o.Password)
			assert.Equal(t, tt.common, commonOpts{o.PoolSize, o.MaxRetries, o.DisableIdentity})
			assert.False(t, o.ContextTimeoutEnabled)
			assert.Equal(t, 3, o.Protocol)
			require.NotNil(t, o.MaintNotificationsConfig)
			assert.Equal(t, "disabled", string(o.MaintNotificationsConfig.Mode))
			if !tt.tls {
				assert.Nil(t, o.TLSConfig)
				return
			}
			require.NotNil(t, o.TLSConfig)
			host, _, _ := net.SplitHostPort(tt.addr)
			assert.Equal(t, host, o.TLSConfig.ServerName)
			assert.Equal(t, uint16(tls.VersionTLS12), o.TLSConfig.MinVersion)
			assert.Equal(t, tt.skip, o.TLSConfig.InsecureSkipVerify)
		})
	}
}

func TestOpenWithTLSConfig(t *testing.T) {
	t.Parallel()
	mine := &tls.Config{MinVersion: tls.VersionTLS13}
	c, err := Open("rediss://cache.example.com:6380", WithTLSConfig(mine))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	got := c.(*redis.Client).Options().TLSConfig
	require.NotNil(t, got)
	assert.NotSame(t, mine, got, "Open must clone the caller's config")
	assert.Equal(t, uint16(tls.VersionTLS13), got.MinVersion)
	assert.Equal(t, "cache.example.com", got.ServerName)
	assert.Empty(t, mine.ServerName, "the caller's config must not be modified")
}

func TestOpenCluster(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		url      string
		addrs    []string
		user     string
		password string
		tls      bool
		skip     bool
	}{
		{name: "several hosts", url: "redis://u:pw@h1:7000,h2:7001,h3?read_timeout=2s", addrs: []string{"h1:7000", "h2:7001", "h3:6379"},
			user: "u", password: "pw"},
		{name: "single seed", url: "redis+cluster://h1:7000", addrs: []string{"h1:7000"}},
		{name: "single seed, trailing slash", url: "redis+cluster://h1:7000/", addrs: []string{"h1:7000"}},
		{name: "tls", url: "rediss+cluster://:pw@h1:7000,h2:7000", addrs: []string{"h1:7000", "h2:7000"}, password: "pw", tls: true},
		{name: "tls several hosts", url: "rediss://h1:7000,h2:7000?skip_verify=true", addrs: []string{"h1:7000", "h2:7000"},
			tls: true, skip: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Open(tt.url, WithAllowSkipVerify())
			require.NoError(t, err)
			t.Cleanup(func() { _ = c.Close() })
			require.IsType(t, &redis.ClusterClient{}, c)
			o := c.(*redis.ClusterClient).Options()
			assert.Equal(t, tt.addrs, o.Addrs)
			assert.Equal(t, tt.user, o.Username)
			assert.Equal(t, tt.password, o.Password)
			assert.Equal(t, commonOpts{DefaultPoolSize, 1, true}, commonOpts{o.PoolSize, o.MaxRetries, o.DisableIdentity})
			assert.False(t, o.ContextTimeoutEnabled)
			require.NotNil(t, o.MaintNotificationsConfig)
			assert.Equal(t, "disabled", string(o.MaintNotificationsConfig.Mode))
			if !tt.tls {
				assert.Nil(t, o.TLSConfig)
				return
			}
			require.NotNil(t, o.TLSConfig)
			assert.Empty(t, o.TLSConfig.ServerName, "each node is verified against its own address")
			assert.Equal(t, tt.skip, o.TLSConfig.InsecureSkipVerify)
		})
	}
}

func TestOpenSentinel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                   string
		url                    string
		master                 string
		sentinels              []string
		db                     int
		user, password         string
		sentinelUser, sentinel string
		tls                    bool
	}{
		{name: "one sentinel", url: "redis+sentinel://s1/mymaster", master: "mymaster", sentinels: []string{"s1:26379"}},
		{name: "full", url: "redis+sentinel://app:s3cr3t@s1:26379,s2:26380/my%20master/2?sentinel_password=t0p&sentinel_username=sen&dial_timeout=1s",
			master: "my master", sentinels: []string{"s1:26379", "s2:26380"}, db: 2, user: "app", password: "s3cr3t",
			sentinelUser: "sen", sentinel: "t0p"},
		{name: "tls", url: "rediss+sentinel://:pw@s1,s2/m", master: "m", sentinels: []string{"s1:26379", "s2:26379"},
			password: "pw", tls: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := parse(tt.url, nil)
			require.NoError(t, err)
			o := s.failover
			require.NotNil(t, o)
			assert.Equal(t, tt.master, o.MasterName)
			assert.Equal(t, tt.sentinels, o.SentinelAddrs)
			assert.Equal(t, tt.db, o.DB)
			assert.Equal(t, tt.user, o.Username)
			assert.Equal(t, tt.password, o.Password)
			assert.Equal(t, tt.sentinelUser, o.SentinelUsername)
			assert.Equal(t, tt.sentinel, o.SentinelPassword)
			assert.Equal(t, commonOpts{DefaultPoolSize, 1, true}, commonOpts{o.PoolSize, o.MaxRetries, o.DisableIdentity})
			assert.False(t, o.ContextTimeoutEnabled)
			if tt.tls {
				require.NotNil(t, o.TLSConfig)
				assert.Empty(t, o.TLSConfig.ServerName)
			} else {
				assert.Nil(t, o.TLSConfig)
			}

			c, err := Open(tt.url)
			require.NoError(t, err)
			t.Cleanup(func() { _ = c.Close() })
			require.IsType(t, &redis.Client{}, c, "a failover client is a *redis.Client")
			co := c.(*redis.Client).Options()
			assert.Equal(t, tt.db, co.DB)
			assert.Equal(t, tt.password, co.Password)
			assert.Equal(t, commonOpts{DefaultPoolSize, 1, true}, commonOpts{co.PoolSize, co.MaxRetries, co.DisableIdentity})
		})
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t"
	tests := []struct {
		name string
		url  string
		opts []OpenOption
		want string // a substring of the error
	}{
		{name: "unknown scheme", url: "ftp://u:s3cr3t@host", want: `unsupported URL scheme "ftp"`},
		{name: "http scheme", url: "http://u:s3cr3t@host:6379", want: `"http"`},
		{name: "no scheme", url: "u:s3cr3t@host:6379", want: "malformed URL"},
		{name: "empty", url: "", want: "malformed URL"},
		{name: "bad port", url: "redis://u:s3cr3t@host:abc", want: "invalid port"},
		{name: "port out of range", url: "redis://u:s3cr3t@host:70000", want: "invalid port"},
		{name: "password without @", url: "redis://u:s3cr3t", want: "invalid port"},
		{name: "password is the port", url: "redis://host:s3cr3t", want: "invalid port"},
		{name: "bad port in cluster", url: "redis://u:s3cr3t@h1:7000,h2:x", want: "host #2: invalid port"},
		{name: "empty host list", url: "redis://u:s3cr3t@", want: "no host"},
		{name: "empty host in list", url: "redis://u:s3cr3t@h1,,h3", want: "host #2: empty host"},
		{name: "empty cluster", url: "redis+cluster://u:s3cr3t@/", want: "no host"},
		{name: "empty sentinel list", url: "redis+sentinel://u:s3cr3t@/mymaster", want: "no host"},
		{name: "unix with host", url: "unix://u:s3cr3t@tmp/redis.sock", want: "takes no host"},
		{name: "unix without path", url: "unix://u:s3cr3t@", want: "empty unix socket path"},
		{name: "bad escape in password", url: "redis://u:s3%zzcr3t@host", want: "malformed URL"},
		{name: "control character", url: "redis://u:s3cr3t@host/0\n", want: "malformed URL"},
		{name: "bad db", url: "redis://u:s3cr3t@host/abc", want: "invalid database number"},
		{name: "db is the password", url: "redis://u:s3cr3t@host/s3cr3t", want: "malformed URL"},
		{name: "option value is the password", url: "redis://u:s3cr3t@host?max_retries=s3cr3t", want: "malformed URL"},
		{name: "unknown option", url: "redis://u:s3cr3t@host?nope=1", want: "unexpected option: nope"},
		{name: "password in query", url: "redis://host?password=s3cr3t", want: "password is not accepted"},
		{name: "addr in query", url: "redis://u:s3cr3t@host?addr=h2:1", want: "comma-separated"},
		{name: "context timeout", url: "redis+sentinel://u:s3cr3t@s1/m?context_timeout_enabled=true", want: "context_timeout_enabled"},
		{name: "skip_verify without opt-in", url: "rediss://u:s3cr3t@host?skip_verify=true", want: "WithAllowSkipVerify"},
		{name: "skip_verify=1 without opt-in", url: "rediss://u:s3cr3t@h1,h2?skip_verify=1", want: "WithAllowSkipVerify"},
		{name: "skip_verify on sentinel without opt-in", url: "rediss+sentinel://u:s3cr3t@s1/m?skip_verify=true", want: "WithAllowSkipVerify"},
		{name: "skip_verify without TLS", url: "redis://u:s3cr3t@host?skip_verify=true", opts: []OpenOption{WithAllowSkipVerify()},
			want: "needs a TLS URL"},
		{name: "skip_verify not a bool", url: "rediss://u:s3cr3t@host?skip_verify=s3cr3t", opts: []OpenOption{WithAllowSkipVerify()},
			want: "skip_verify must be true or false"},
		{name: "WithTLSConfig without TLS", url: "redis://u:s3cr3t@host", opts: []OpenOption{WithTLSConfig(&tls.Config{})},
			want: "WithTLSConfig needs a TLS URL"},
		{name: "pool size 0", url: "redis://u:s3cr3t@host", opts: []OpenOption{WithPoolSize(0)}, want: "pool size 0"},
		{name: "cluster with db", url: "redis://u:s3cr3t@h1,h2/1", want: "no database number"},
		{name: "sentinel without master", url: "redis+sentinel://u:s3cr3t@s1:26379", want: "master name"},
		{name: "sentinel bad db", url: "redis+sentinel://u:s3cr3t@s1/m/x", want: "invalid database number"},
		{name: "sentinel too deep", url: "redis+sentinel://u:s3cr3t@s1/m/1/2", want: "master name"},
		{name: "sentinel route_by_latency", url: "redis+sentinel://u:s3cr3t@s1/m?route_by_latency=true", want: "route_by_latency"},
		{name: "sentinel master_name", url: "redis+sentinel://u:s3cr3t@s1/m?master_name=x", want: "master_name"},
		{name: "sentinel password in query", url: "redis+sentinel://s1/m?sentinel_password=s3cr3t&dial_timeout=s3cr3t", want: "malformed URL"},
		// A password with an unencoded '/', '?' or '#' moves its end, and the
		// '@', out of the authority: refused, quoting nothing.
		{name: "unencoded / in password", url: "redis://u:s3cr3t/x@host", want: "'@' after the host part"},
		{name: "unencoded / in password, port-like", url: "redis://u:1234/s3cr3t@host", want: "'@' after the host part"},
		{name: "unencoded ? in password", url: "redis://u:s3cr3t?x@host", want: "'@' after the host part"},
		{name: "unencoded # in password", url: "redis://u:12#s3cr3t@host", want: "'@' after the host part"},
		{name: "unencoded # in cluster password", url: "redis://u:s3cr3t#x@h1,h2", want: "'@' after the host part"},
		{name: "unencoded @ in sentinel_password", url: "redis+sentinel://s1/m?sentinel_password=s3cr3t@x", want: "'@' after the host part"},
		{name: "unencoded / in a short password", url: "redis://u:a/s3cr3t@host", want: "'@' after the host part"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Open(tt.url, tt.opts...)
			require.Error(t, err)
			assert.Nil(t, c)
			assert.ErrorIs(t, err, ErrInvalidOption)
			assert.Contains(t, err.Error(), tt.want)
			assert.True(t, strings.HasPrefix(err.Error(), "broker: open "), err.Error())
			assert.Equal(t, 1, strings.Count(err.Error(), "broker:"), "the prefix reads once: %s", err)
			assert.Contains(t, err.Error(), ": invalid option: ")
			assert.NotContains(t, err.Error(), secret)
			var ue *url.Error
			assert.False(t, errors.As(err, &ue), "no url.Error (which quotes the URL) in the chain")
			for e := err; e != nil; e = errors.Unwrap(e) {
				assert.NotContains(t, e.Error(), secret)
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
	}{
		{"redis://localhost:6379/0", "redis://localhost:6379/0"},
		{"redis://alice:s3cr3t@host:6379/2", "redis://alice:xxxxx@host:6379/2"},
		{"redis://:s3cr3t@host", "redis://:xxxxx@host"},
		{"redis://alice@host", "redis://alice@host"},
		{"rediss://u:p%40ss@host?dial_timeout=3s", "rediss://u:xxxxx@host?dial_timeout=3s"},
		{"redis://u:p@ss@host", "redis://u:xxxxx@host"},
		{"redis://u:s3cr3t@h1:7000,h2:7001,[::1]:7002", "redis://u:xxxxx@h1:7000,h2:7001,[::1]:7002"},
		{"redis+sentinel://u:s3cr3t@s1,s2/m/1?sentinel_password=t0p&db=1&password=x",
			"redis+sentinel://u:xxxxx@s1,s2/m/1?sentinel_password=xxxxx&db=1&password=xxxxx"},
		{"unix://u:s3cr3t@/tmp/redis.sock?db=1", "unix://u:xxxxx@/tmp/redis.sock?db=1"},
		{"REDIS://host", "redis://host"},
		{"redis://u:s3cr3t", unparseableURL},       // the password looks like a port
		{"redis://u:s3/cr3t@host", unparseableURL}, // unencoded '/' in the password
		{"redis://u:s3?cr3t@host", unparseableURL}, // unencoded '?' in the password
		{"u:s3cr3t@host:6379", unparseableURL},     // no scheme
		{"", unparseableURL},                       // empty
		{"redis://u:s3cr3t@ho st", unparseableURL}, // invalid host
		{"redis://h1,u:s3cr3t", unparseableURL},    // one bad host among several
		{"3redis://u:s3cr3t@host", unparseableURL}, // invalid scheme
		{"redis://host?x=%zz&password=s3cr3t", "redis://host?x=%zz&password=xxxxx"},
		{"redis://u:s3cr3t@host/s3cr3t?client_name=s3cr3t", "redis://u:xxxxx@host/xxxxx?client_name=xxxxx"},
		{"redis://u:x@host/0?password=x", "redis://u:xxxxx@host/0?password=xxxxx"},
		{"redis://u:0@host/0", "redis://u:xxxxx@host/xxxxx"},
		{"redis://e:e@host?password=redacted", "redis://xxxxx:xxxxx@host?password=xxxxx"},
		// An '@' after the host part is the end of a password with an
		// unencoded '/', '?' or '#'.
		{"redis://u:1234/s3cr3t@host", unparseableURL},
		{"redis://u:s3cr3t/x@host/0", unparseableURL},
		{"redis://u:12#s3cr3t@host", unparseableURL},
		{"redis://u:12?s3cr3t@host", unparseableURL},
		{"redis://host?client_name=a@s3cr3t", unparseableURL},
		// A short password is replaced only where a whole part equals it:
		// options, ports and hosts that contain it are kept as written.
		{"redis://u:a@host:6381/0?dial_timeout=3s&read_timeout=2s", "redis://u:xxxxx@host:6381/0?dial_timeout=3s&read_timeout=2s"},
		{"redis://u:1@host:6381/1?pool_size=10&client_name=1", "redis://u:xxxxx@host:6381/xxxxx?pool_size=10&client_name=xxxxx"},
		{"redis://u:dial@host?dial_timeout=3s", "redis://u:xxxxx@host?dial_timeout=3s"},
		// A longer one is also replaced inside other parts, but never inside
		// an option name.
		{"redis://u:s3cr3t@host?client_name=app-s3cr3t", "redis://u:xxxxx@host?client_name=app-xxxxx"},
		{"redis://u:6379@host:6379", "redis://u:xxxxx@host:xxxxx"},
		{"redis://u:timeout@host?dial_timeout=timeout", "redis://u:xxxxx@host?dial_timeout=xxxxx"},
		{"redis://u:s3cr3t@host?s3cr3t", "redis://u:xxxxx@host?xxxxx"},
		{"redis://u:s3cr3t@host#s3cr3t", "redis://u:xxxxx@host#xxxxx"},
		// Passwords that contain one another are each replaced whole.
		{"redis://u:s3cr3t@host?sentinel_password=s3cr3t2&client_name=s3cr3t2s3cr3t",
			"redis://u:xxxxx@host?sentinel_password=xxxxx&client_name=xxxxxxxxxx"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got := RedactURL(tt.in)
			assert.Equal(t, tt.want, got)
			assert.NotContains(t, got, "s3cr3t")
		})
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func debugLogger() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func TestCheckMiniredis(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	m.RequireUserAuth("alice", "s3cr3t")

	c, err := Open("redis://alice:s3cr3t@" + m.Addr() + "/0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	log, buf := debugLogger()
	require.NoError(t, Check(t.Context(), c, log))
	out := buf.String()
	assert.Contains(t, out, "level=DEBUG")
	assert.Contains(t, out, "maxmemory-policy")
	assert.NotContains(t, out, "level=WARN")
	assert.NotContains(t, out, "s3cr3t")

	require.NoError(t, Check(t.Context(), c, nil), "a nil logger is silent")
}

func TestCheckErrors(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	m.RequireAuth("right")

	c, err := Open("redis://:wrong@" + m.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	err = Check(t.Context(), c, nil)
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "broker: check: "), err.Error())
	assert.NotContains(t, err.Error(), "wrong")

	addr := m.Addr()
	m.Close()
	c2, err := Open("redis://" + addr + "?dial_timeout=1s")
	require.NoError(t, err)
	t.Cleanup(func() { _ = c2.Close() })
	err = Check(t.Context(), c2, nil)
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "broker: check: "), err.Error())
}

func TestCheckRedisServer(t *testing.T) {
	t.Parallel()
	// A server of this test's own (its pid checked): the CONFIG SETs below
	// must never reach a server the test did not start.
	srv := redistest.NewReal(t)
	addr := srv.Addr
	ctx := t.Context()

	c, err := Open("redis://" + addr + "/0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	// The default policy is noeviction: no warning.
	log, buf := debugLogger()
	require.NoError(t, Check(ctx, c, log))
	assert.NotContains(t, buf.String(), "level=WARN")
	assert.Contains(t, buf.String(), "maxmemory-policy is noeviction")

	srv.Do(t, "CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
	log, buf = debugLogger()
	require.NoError(t, Check(ctx, c, log))
	out := buf.String()
	assert.Contains(t, out, "level=WARN")
	assert.Contains(t, out, "maxmemory-policy=allkeys-lru")
	assert.Contains(t, out, "noeviction")

	srv.Do(t, "CONFIG", "SET", "maxmemory-policy", "noeviction")
	log, buf = debugLogger()
	require.NoError(t, Check(ctx, c, log))
	assert.NotContains(t, buf.String(), "level=WARN")

	// Only clients made by Open and redistest (whose handshake is clean too)
	// have talked to this server: a clean handshake (no CLIENT SETINFO, no
	// CLIENT MAINT_NOTIFICATIONS) leaves no error in errorstats. A second
	// client opens a fresh connection.
	c2, err := Open("redis://" + addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c2.Close() })
	require.NoError(t, c2.Set(ctx, "k", "v", 0).Err())
	stats, err := c.Info(ctx, "errorstats").Result()
	require.NoError(t, err)
	assert.NotContains(t, stats, "errorstat_", "handshake errors: %s", stats)
}

func TestCheckRedisServerNoConfig(t *testing.T) {
	t.Parallel()
	srv := redistest.NewReal(t) // its own: ACL SETUSER never reaches another server
	addr := srv.Addr
	ctx := t.Context()

	srv.Do(t, "ACL", "SETUSER", "app", "on", ">s3cr3t", "~*", "+@all", "-config")

	c, err := Open("redis://app:s3cr3t@" + addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	log, buf := debugLogger()
	require.NoError(t, Check(ctx, c, log), "NOPERM on CONFIG is not an error")
	assert.Contains(t, buf.String(), "level=DEBUG")
	assert.Contains(t, buf.String(), "NOPERM")
	assert.NotContains(t, buf.String(), "level=WARN")
}

func TestCheckCancelled(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	c, err := Open("redis://" + m.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err = Check(ctx, c, nil)
	require.ErrorIs(t, err, context.Canceled)
}
