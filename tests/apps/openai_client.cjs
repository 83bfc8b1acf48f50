// `ponder serve` through the official `openai` npm package (v4): a completion, a chat
// completion, streamed ones, and errors the client must raise as APIError.
//
// usage: NODE_PATH=<dir>/node_modules node openai_client.cjs BASE_URL MODEL
// Prints one line per check and exits non-zero on any failure.
'use strict';

const mod = require('openai');
const OpenAI = mod.OpenAI || mod.default || mod;

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0, timeout: 60000 });

let failed = 0;
function check(name, cond, detail) {
  if (cond) {
    console.log(`[ OK ] node: ${name}`);
  } else {
    failed += 1;
    console.log(`[FAIL] node: ${name} ${detail === undefined ? '' : JSON.stringify(detail)}`);
  }
}

async function expectApiError(name, promise, status, param) {
  try {
    await promise;
    check(name, false, 'no error raised');
  } catch (e) {
    check(name, e instanceof OpenAI.APIError && e.status === status &&
      (param === undefined || e.param === param), { status: e.status, param: e.param, message: e.message });
  }
}

async function main() {
  // Greedy, seeded: the streamed text must equal the plain one. A deadline far away, so that
  // no token exits on the clock (routine_transaction's own is 2 s, which a loaded machine
  // can overrun, and then the two texts differ).
  const request = {
    model, prompt: 'lctvqbz|', max_tokens: 12, temperature: 0, seed: 7,
    profile: 'finance', task_class: 'routine_transaction', return_token_steps: true,
    deadline_ms: 600000,
  };
  const c = await client.completions.create(request);
  const text = c.choices[0].text;
  check('completion shape', c.object === 'text_completion' && c.model === model &&
    typeof text === 'string' && c.id.startsWith('cmpl-'), c);
  check('completion usage', c.usage.completion_tokens >= 1 && c.usage.prompt_tokens >= 1 &&
    c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens &&
    c.usage.steps_total > 0 && c.usage.profile === 'finance' &&
    c.usage.task_class === 'routine_transaction' &&
    c.usage.token_steps.length === c.usage.completion_tokens, c.usage);
  check('completion finish_reason', ['stop', 'length'].includes(c.choices[0].finish_reason),
    c.choices[0]);

  // The same seeded greedy request, plain and streamed, must give the same text.
  const chatRequest = {
    model, messages: [{ role: 'system', content: 'Answer.' }, { role: 'user', content: 'j6a3?j' }],
    max_tokens: 8, temperature: 0, seed: 7, profile: 'chat', deadline_ms: 600000,
  };
  const chat = await client.chat.completions.create(chatRequest);
  check('chat completion', chat.object === 'chat.completion' &&
    chat.choices[0].message.role === 'assistant' &&
    typeof chat.choices[0].message.content === 'string' && chat.usage.profile === 'chat', chat);

  const stream = await client.completions.create({
    ...request, stream: true, stream_options: { include_usage: true },
  });
  let streamed = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      streamed += choice.text;
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  check('streamed completion equals the plain one', streamed === text, { streamed, text });
  check('stream finish and usage chunk', finish === c.choices[0].finish_reason && usage !== null &&
    usage.completion_tokens === c.usage.completion_tokens && chunks >= 2, { finish, usage, chunks });

  const chatStream = await client.chat.completions.create({ ...chatRequest, stream: true });
  let role = null;
  let content = '';
  let chatFinish = null;
  for await (const chunk of chatStream) {
    const delta = chunk.choices[0].delta;
    if (delta.role) role = delta.role;
    if (delta.content) content += delta.content;
    if (chunk.choices[0].finish_reason) chatFinish = chunk.choices[0].finish_reason;
  }
  check('streamed chat', role === 'assistant' && content === chat.choices[0].message.content &&
    chatFinish !== null, { role, content, chatFinish });

  await expectApiError('unknown profile is a 400 APIError',
    client.completions.create({ model, prompt: 'x', profile: 'no-such-profile' }), 400, 'profile');
  await expectApiError('wrong type is a 400 APIError',
    client.completions.create({ model, prompt: 'x', max_steps: 'deep' }), 400, 'max_steps');
  await expectApiError('unknown model is a 404 APIError',
    client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] }),
    404, 'model');
  await expectApiError('a refused stream is an APIError before any chunk',
    client.completions.create({ model, prompt: 'x', stream: true, exit: 'no-such-rule' }), 400, 'exit');

  const models = await client.models.list();
  check('models.list', models.data.length === 1 && models.data[0].id === model, models.data);
}

main().then(() => {
  console.log(failed ? `node: ${failed} failed` : 'node: all passed');
  process.exit(failed ? 1 : 0);
}, (e) => {
  console.log(`[FAIL] node: unexpected error ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
