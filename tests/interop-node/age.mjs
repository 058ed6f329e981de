// A tiny command-line front end to the age-encryption npm package (typage), an implementation of
// age independent of ours, for tests/interop_node.rs. Files are read and written whole.
//
//   node age.mjs keygen pq|x25519 IDENTITY_FILE   writes the identity, prints the recipient
//   node age.mjs encrypt RECIPIENT IN OUT
//   node age.mjs decrypt IDENTITY_FILE IN OUT     identity file: age's format (# comments);
//                                                 ASCII-armored input is detected
import { readFileSync, writeFileSync } from "node:fs";
import {
  armor,
  Decrypter,
  Encrypter,
  generateHybridIdentity,
  generateX25519Identity,
  identityToRecipient,
} from "age-encryption";

const [cmd, a, b, c] = process.argv.slice(2);

function identities(path) {
  return readFileSync(path, "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
}

if (cmd === "keygen") {
  const id = a === "pq" ? await generateHybridIdentity() : await generateX25519Identity();
  const r = await identityToRecipient(id);
  writeFileSync(b, `# public key: ${r}\n${id}\n`, { mode: 0o600 });
  process.stdout.write(`${r}\n`);
} else if (cmd === "encrypt") {
  const e = new Encrypter();
  e.addRecipient(a);
  writeFileSync(c, await e.encrypt(readFileSync(b)));
} else if (cmd === "decrypt") {
  const d = new Decrypter();
  for (const id of identities(a)) d.addIdentity(id);
  let file = readFileSync(b);
  if (file.subarray(0, 10).toString("latin1") === "-----BEGIN") {
    file = armor.decode(file.toString("latin1"));
  }
  writeFileSync(c, await d.decrypt(file));
} else {
  process.stderr.write("usage: age.mjs keygen|encrypt|decrypt ...\n");
  process.exit(2);
}
