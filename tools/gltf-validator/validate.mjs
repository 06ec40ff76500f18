#!/usr/bin/env node
// Validate a glTF 2.0 asset (.glb or .gltf) with the Khronos glTF validator.
//
// Usage: node tools/gltf-validator/validate.mjs FILE
//
// Prints the validator's JSON report on stdout (report.issues.numErrors, numWarnings, ...).
// Exit status: 0 when the asset has no errors, 1 when it has errors, 2 when the file cannot
// be read or the validator cannot parse it at all.

import { readFile } from "node:fs/promises";
import path from "node:path";

import * as validator from "gltf-validator";

async function main(argv) {
  if (argv.length !== 1) {
    console.error("usage: node validate.mjs FILE");
    return 2;
  }
  const file = argv[0];
  let data;
  try {
    data = await readFile(file);
  } catch (error) {
    console.error(`error: cannot read ${file}: ${error.message}`);
    return 2;
  }
  const folder = path.dirname(path.resolve(file));
  let report;
  try {
    report = await validator.validateBytes(new Uint8Array(data), {
      uri: path.basename(file),
      maxIssues: 0,
      writeTimestamp: false,
      externalResourceFunction: async (uri) =>
        new Uint8Array(await readFile(path.resolve(folder, decodeURIComponent(uri)))),
    });
  } catch (error) {
    console.error(`error: the validator could not parse ${file}: ${error}`);
    return 2;
  }
  console.log(JSON.stringify(report, null, 2));
  return report.issues.numErrors === 0 ? 0 : 1;
}

process.exitCode = await main(process.argv.slice(2));
