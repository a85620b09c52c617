// Node peer for tests/interop.rs: the BSK spec's section 15 Node sample, verbatim in its
// library calls, wrapped in a command line.
//
//   node peer.js encrypt KEY IV   < plaintext   > base64 ciphertext (no newline)
//   node peer.js decrypt KEY IV   < base64      > plaintext bytes   (no newline)
//
// Like the sample, the plaintext is a JS string (stdin read as UTF-8) and `update(text)`
// encodes it as UTF-8; decryption ends in `decrypted.toString()` (UTF-8).
'use strict';
const crypto = require('crypto');
const fs = require('fs');

const [mode, key, iv] = process.argv.slice(2);
if (!mode || key === undefined || iv === undefined) {
  process.stderr.write('usage: node peer.js encrypt|decrypt KEY IV\n');
  process.exit(2);
}
const input = fs.readFileSync(0);

if (mode === 'encrypt') {
  const text = input.toString('utf8');
  // --- spec sample ---
  let cipher = crypto.createCipheriv('aes-256-cbc', Buffer.from(key), iv);
  let encrypted = cipher.update(text);
  encrypted = Buffer.concat([encrypted, cipher.final()]);
  let encryptedData = encrypted.toString('base64');
  // --- end ---
  process.stdout.write(encryptedData);
} else if (mode === 'decrypt') {
  const encryptedData = input.toString('utf8');
  // --- spec sample ---
  let encryptedText = Buffer.from(encryptedData, 'base64');
  let decipher = crypto.createDecipheriv('aes-256-cbc', Buffer.from(key), iv);
  let decrypted = decipher.update(encryptedText);
  decrypted = Buffer.concat([decrypted, decipher.final()]);
  let decryptedData = decrypted.toString();
  // --- end ---
  process.stdout.write(decryptedData, 'utf8');
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
