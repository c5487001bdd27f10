/**
 * Writes the API's OpenAPI document (JSON) to the file given, or to stdout: `npm run openapi -- FILE`.
 * scripts/test.sh lints it with redocly (redocly.yaml).
 */
import { writeFileSync } from 'node:fs';
import { openApiDocument } from '../src/controller/api/openapi.ts';

const text = JSON.stringify(await openApiDocument(), null, 2) + '\n';
const file = process.argv[2];
if (file === undefined) process.stdout.write(text);
else writeFileSync(file, text);
