// Writes golden-gpt2.json: GPT-2 ids of every entry of inputs.json, from js-tiktoken (pure JavaScript).
//   NODE_PATH=/path/to/node_modules node tests/data/tokenizer/make_golden_gpt2.js   (npm install js-tiktoken)
// make_golden.py produces the same file from Python tiktoken; this script exists so the golden data can
// be made on a machine without Python packages.
//
// Rules shared with make_golden.py (and implemented by um::tok::Tokenizer):
//  - ids:          tiktoken encode(text, allowed_special="all"): "<|endoftext|>" in text is the special token.
//  - ids_ordinary: tiktoken encode_ordinary(text): special tokens are plain text.
//  - {"base64": ...} entries are raw bytes: the well-formed UTF-8 stretches are encoded as above and every
//    byte outside them becomes its single-byte token.
// JavaScript's \s differs from Unicode White_Space (the \s of Python tiktoken and Hugging Face): it adds
// U+FEFF and lacks U+0085. Entries holding either are left out here and listed under "excluded".
'use strict';
const fs = require('fs');
const path = require('path');
const { getEncoding } = require('js-tiktoken');

const here = __dirname;
const root = path.resolve(here, '..', '..', '..');
const inputs = JSON.parse(fs.readFileSync(path.join(here, 'inputs.json'), 'utf8'));
const encoder = JSON.parse(fs.readFileSync(path.join(root, 'data_tools/tokenizers/gpt2/encoder.json'), 'utf8'));
const enc = getEncoding('gpt2');
// The package's "exports" hide package.json from require(): read it next to the resolved entry point.
const version = (() => {
  let dir = path.dirname(require.resolve('js-tiktoken'));
  while (!fs.existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  return JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
})();

// GPT-2's byte -> printable code point map, and so byte -> single-byte token id.
function byteTokenIds() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; ++b) bs.push(b);
  for (let b = 0xa1; b <= 0xac; ++b) bs.push(b);
  for (let b = 0xae; b <= 0xff; ++b) bs.push(b);
  const map = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; ++b) map[b] = bs.includes(b) ? b : next++;
  return map.map((cp) => encoder[String.fromCodePoint(cp)]);
}
const byteIds = byteTokenIds();

// Length of the well-formed UTF-8 sequence at bytes[i] (RFC 3629), or 0.
function utf8Length(bytes, i) {
  const b0 = bytes[i];
  const cont = (k, lo = 0x80, hi = 0xbf) => i + k < bytes.length && bytes[i + k] >= lo && bytes[i + k] <= hi;
  if (b0 < 0x80) return 1;
  if (b0 >= 0xc2 && b0 <= 0xdf) return cont(1) ? 2 : 0;
  if (b0 >= 0xe0 && b0 <= 0xef) {
    const lo = b0 === 0xe0 ? 0xa0 : 0x80, hi = b0 === 0xed ? 0x9f : 0xbf;
    return cont(1, lo, hi) && cont(2) ? 3 : 0;
  }
  if (b0 >= 0xf0 && b0 <= 0xf4) {
    const lo = b0 === 0xf0 ? 0x90 : 0x80, hi = b0 === 0xf4 ? 0x8f : 0xbf;
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

function encodeBytes(bytes, encodeText) {
  const ids = [];
  const decoder = new TextDecoder('utf-8', { fatal: true });
  let i = 0;
  while (i < bytes.length) {
    let j = i;
    for (let len; j < bytes.length && (len = utf8Length(bytes, j)) > 0;) j += len;
    if (j > i) ids.push(...encodeText(decoder.decode(bytes.subarray(i, j))));
    if (j < bytes.length) ids.push(byteIds[bytes[j]]);
    i = j + 1;
  }
  return ids;
}

const withSpecial = (t) => enc.encode(t, 'all');
const ordinary = (t) => enc.encode(t, [], []);
const cases = [];
const excluded = [];
inputs.forEach((input, index) => {
  if (typeof input === 'string') {
    if (/[\u0085\ufeff]/u.test(input)) {
      excluded.push({ index, reason: 'holds U+0085 or U+FEFF, where JavaScript \\s differs from Unicode' });
      return;
    }
    cases.push({ input, ids: withSpecial(input), ids_ordinary: ordinary(input) });
  } else {
    const bytes = Buffer.from(input.base64, 'base64');
    cases.push({ input, ids: encodeBytes(bytes, withSpecial), ids_ordinary: encodeBytes(bytes, ordinary) });
  }
});

const golden = { reference: `js-tiktoken ${version} getEncoding("gpt2")`, tokenizer: 'data_tools/tokenizers/gpt2', excluded, cases };
const out = path.join(here, 'golden-gpt2.json');
fs.writeFileSync(out, JSON.stringify(golden) + '\n');
console.log(`${out}: ${cases.length} cases, ${excluded.length} excluded`);
