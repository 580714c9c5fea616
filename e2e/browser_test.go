package e2e

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chromium returns the path of a Chromium, or skips (fails with
// BROKER_TEST_BROWSER=require).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("BROKER_TEST_BROWSER") == "require" {
		t.Fatal("no chromium on PATH and BROKER_TEST_BROWSER=require (apt-get install chromium)")
	}
	t.Skip("no chromium on PATH; browser test skipped (.ci/run installs it)")
	return ""
}

// TestBrowserDemoPage loads the live page of the demo (on its embedded
// Redis, as a learner runs it) in headless Chromium, clicks each pattern's
// button and waits until the counts read from Redis show the message
// published and consumed, checks every count the page promises is there,
// then saves a screenshot as PNG: to $BROKER_SCREENSHOT when set, else to
// broker-demo-page.png in the temp dir; the log names the file.
func TestBrowserDemoPage(t *testing.T) {
	exe := chromium(t)
	redisAddr, addr := freeAddr(t), freeAddr(t)
	base := "http://" + addr
	start(t, bin(t, "demo"), []string{"REDIS_URL="}, "-default-redis", redisAddr, "-addr", addr, "-quiet")
	waitHTTP(t, base+"/healthz")

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1200, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	defer cancelCtx()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(`button[data-publish="queue"]`),
	))
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(sel))
		require.NoError(t, err, sel)
		return strings.TrimSpace(s)
	}
	poll := func(expr string) error {
		_, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(15*time.Second)))
		return err
	}
	num := func(sel string) string { return `Number(document.querySelector('` + sel + `').textContent)` }

	// Every count the page promises is on it.
	for _, k := range []string{
		"queue.published", "queue.consumed", "queue.ready", "queue.processing", "queue.delayed", "queue.dead", "queue.consumers",
		"pubsub.published", "pubsub.consumed", "pubsub.subscribers",
		"stream.published", "stream.consumed", "stream.length", "stream.pending", "stream.lag", "stream.groups",
	} {
		require.NoError(t, poll(`document.querySelector('[data-k="`+k+`"]') !== null`), "no %s on the page", k)
	}
	for _, m := range []string{"queue", "pubsub", "stream"} {
		for _, k := range []string{"published", "consumed"} {
			require.NoError(t, poll(`document.querySelector('[data-r="`+m+`.`+k+`"]') !== null`), "no %s.%s rate", m, k)
		}
	}
	require.NoError(t, poll(`document.querySelector('canvas#chart') !== null`), "no chart")

	for _, mode := range []string{"queue", "pubsub", "stream"} {
		require.NoError(t, chromedp.Do(ctx, chromedp.Click(`button[data-publish="`+mode+`"]`)), mode)
		require.NoError(t, poll(`document.querySelector('[data-last="`+mode+`"]').textContent.startsWith("202")`), mode)
		t.Logf("%s button: %s", mode, text(`[data-last="`+mode+`"]`))
	}
	// The page refreshes /stats every second: wait until every pattern shows
	// its message published and consumed, and a publish rate.
	for _, mode := range []string{"queue", "pubsub", "stream"} {
		for _, k := range []string{"published", "consumed"} {
			sel := `[data-k="` + mode + `.` + k + `"]`
			require.NoError(t, poll(num(sel)+` > 0`), "%s %s count never became non-zero", mode, k)
		}
		require.NoError(t, poll(num(`[data-r="`+mode+`.published"]`)+` > 0`), "%s publish rate never became non-zero", mode)
	}
	n, err := strconv.Atoi(text(`[data-k="pubsub.subscribers"]`))
	require.NoError(t, err)
	require.Positive(t, n, "live subscribers")
	require.NoError(t, poll(num(`[data-k="stream.length"]`)+` === 1`), "stream length")
	// Lag 0: the entry was delivered (the embedded Redis itself would say 1).
	require.NoError(t, poll(`document.querySelector('[data-k="stream.lag"]').textContent === "0"`), "stream lag: %s", text(`[data-k="stream.lag"]`))
	require.NoError(t, poll(`document.querySelector('[data-k="stream.pending"]').textContent === "0"`), "stream pending")
	require.Contains(t, text(`[data-k="stream.groups"]`), "demo: pending 0, lag 0, consumed 1")
	require.Equal(t, "live", text("#status"))

	// Under a steady 50 msgs/s the consumed rate reads about 50 at every
	// refresh: the consumers report a few times a second and the page
	// averages over five seconds, so it does not alternate between 0 and
	// 100 as per-poll differences of once-a-second reports would. The load
	// goes through the producer's endpoints, as a learner's clicks do, so
	// the screenshot's published and consumed counts agree.
	const rate = 50
	loadCtx, stopLoad := context.WithCancel(context.Background())
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
			}
			// Every pattern gets load; the queue the steady rate.
			ep := "queue"
			if i%10 == 0 {
				ep = []string{"pubsub", "stream"}[i/10%2]
			}
			if resp, err := http.Get(base + "/" + ep); err == nil {
				resp.Body.Close()
			}
		}
	}()
	defer func() { stopLoad(); <-loadDone }()
	_, err = chromedp.Run(ctx, chromedp.Evaluate[bool](`
		window.rates = [];
		new MutationObserver(() => window.rates.push(Number(document.querySelector('[data-r="queue.consumed"]').textContent)))
			.observe(document.querySelector('[data-r="queue.consumed"]'), { childList: true, characterData: true, subtree: true });
		true`))
	require.NoError(t, err)
	// The first five seconds fill the window; the next ten are measured.
	_, err = chromedp.Run(ctx, chromedp.Poll[bool](`window.rates.length >= 16`, chromedp.WithPollingTimeout(40*time.Second)))
	require.NoError(t, err)
	rates, err := chromedp.Run(ctx, chromedp.Evaluate[[]float64](`window.rates`))
	require.NoError(t, err)
	t.Logf("queue consumed per second, one value per refresh: %v", rates)
	for i, r := range rates[6:] {
		assert.InDelta(t, rate*0.9, r, rate*0.3, "refresh %d: %v", i+6, rates)
	}

	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	shot := os.Getenv("BROKER_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(os.TempDir(), "broker-demo-page.png")
	}
	require.NoError(t, os.MkdirAll(filepath.Dir(shot), 0o755))
	require.NoError(t, os.WriteFile(shot, png, 0o644))
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
}
