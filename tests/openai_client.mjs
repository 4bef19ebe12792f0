// The official OpenAI client, unchanged, against `qwen-image serve`:
//   node openai_client.mjs BASE_URL OUT_DIR [PICTURE]
//   node openai_client.mjs --edit-model BASE_URL OUT_DIR PICTURE PICTURE2
// The second form: a server holding a Qwen-Image-Edit model; images.edit with
// the two pictures as the client sends a list (-> OUT_DIR/openai_edit2.png).
// images.generate with response_format b64_json (-> OUT_DIR/openai.png), with url
// (fetched: the same bytes), and
// with stream + partial_images 2 (every event parsed by the client; the
// completed image -> OUT_DIR/openai_stream.png), and images.edit of PICTURE
// (-> OUT_DIR/openai_edit.png). Prints one line per claim;
// exits 1 when one fails. Our extensions (steps, seed, negative_prompt, cfg)
// ride in the body as extra fields, which the client passes through.
import OpenAI, { toFile } from 'openai';
import { readFileSync, writeFileSync } from 'node:fs';

const editModel = process.argv[2] === '--edit-model';
const [base, out, picture, picture2] = process.argv.slice(editModel ? 3 : 2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60000 });
const request = { model: 'qwen-image', prompt: 'a cat', size: '32x48', negative_prompt: 'blur', cfg: 3, seed: 7 };
let failed = 0;
const claim = (ok, what) => { console.log(`${ok ? 'ok' : 'FAIL'} - ${what}`); if (!ok) failed++; };

if (editModel) { // Qwen-Image-Edit: the pictures are the references, in order
  const image = [await toFile(readFileSync(picture), 'in_b.png', { type: 'image/png' }),
                 await toFile(readFileSync(picture2), 'in_c.png', { type: 'image/png' })];
  const e = await client.images.edit({ model: 'qwen-image', image, prompt: 'swap them', size: '32x48', steps: 2,
                                       seed: 22, response_format: 'b64_json' });
  claim(Array.isArray(e.data) && e.data.length === 1 && typeof e.data[0].b64_json === 'string',
        'images.edit with two pictures (Edit model): one b64_json image');
  writeFileSync(`${out}/openai_edit2.png`, Buffer.from(e.data[0].b64_json, 'base64'));
  process.exit(failed ? 1 : 0);
}

const r = await client.images.generate({ ...request, steps: 2, response_format: 'b64_json' });
claim(Array.isArray(r.data) && r.data.length === 1 && typeof r.data[0].b64_json === 'string',
      'images.generate: one b64_json image');
claim(typeof r.created === 'number', 'images.generate: created is a number');
writeFileSync(`${out}/openai.png`, Buffer.from(r.data[0].b64_json, 'base64'));

// response_format url: a link on the server; fetched, the same bytes as b64_json gave
const u = await client.images.generate({ ...request, steps: 2, response_format: 'url' });
const url = u.data?.[0]?.url;
claim(typeof url === 'string' && url.startsWith(`${base}/v1/files/`), `images.generate with url: ${url}`);
const fetched = Buffer.from(await (await fetch(url)).arrayBuffer());
claim(fetched.equals(Buffer.from(r.data[0].b64_json, 'base64')), 'the url serves the bytes b64_json gave');

const stream = await client.images.generate({ ...request, steps: 4, stream: true, partial_images: 2 });
const types = [];
let partials = 0;
for await (const event of stream) {
  types.push(event.type);
  if (event.type === 'image_generation.partial_image') {
    claim(event.partial_image_index === partials && event.b64_json.length > 0,
          `partial image ${partials} parsed (index ${event.partial_image_index})`);
    partials++;
  } else if (event.type === 'image_generation.completed') {
    writeFileSync(`${out}/openai_stream.png`, Buffer.from(event.b64_json, 'base64'));
  }
}
claim(partials === 2, `stream: 2 partial images (got ${partials})`);
claim(types.at(-1) === 'image_generation.completed', `stream ends with completed (${types.join(', ')})`);

// images.edit: multipart/form-data with the picture (img2img); our fields ride along as form fields
if (picture) {
  const image = await toFile(readFileSync(picture), 'in_b.png', { type: 'image/png' });
  const e = await client.images.edit({ model: 'qwen-image', image, prompt: 'a cat', size: '32x48', steps: 4, seed: 7,
                                       strength: 0.5, response_format: 'b64_json' });
  claim(Array.isArray(e.data) && e.data.length === 1 && typeof e.data[0].b64_json === 'string',
        'images.edit: one b64_json image');
  writeFileSync(`${out}/openai_edit.png`, Buffer.from(e.data[0].b64_json, 'base64'));
}
process.exit(failed ? 1 : 0);
