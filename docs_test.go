package broker_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDocSnippetsAreCompiled keeps the Go code in README.md and docs/ honest:
// every ```go block must appear, line for line, in an Example function of
// one of the example test files below, which the compiler checks and go test
// runs against miniredis.
func TestDocSnippetsAreCompiled(t *testing.T) {
	docs, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	docs = append(docs, "README.md")
	examples, err := filepath.Glob("*example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	var src []string
	for _, f := range examples {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src = append(src, normalize(string(b))...)
	}
	block := regexp.MustCompile("(?s)```go\n(.*?)```")
	found := 0
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range block.FindAllStringSubmatch(string(b), -1) {
			found++
			lines := normalize(m[1])
			if !containsRun(src, lines) {
				t.Errorf("%s: this Go snippet is not in any *example_test.go:\n%s", doc, m[1])
			}
		}
	}
	if found == 0 {
		t.Fatal("no Go snippets found: the doc layout changed?")
	}
}

// normalize drops indentation and blank lines, so a snippet matches the
// indented body of an Example.
func normalize(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func containsRun(hay, needle []string) bool {
	for i := 0; i+len(needle) <= len(hay); i++ {
		match := true
		for j, l := range needle {
			if hay[i+j] != l {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}
