// openai-node and the Vercel AI SDK against a live Tollway, run by tests/e2e/test_node_clients.py
// (which starts gunicorn and the loopback upstreams, and passes their names in the environment).
import assert from "node:assert/strict";
import { test } from "node:test";

import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateObject, generateText, jsonSchema, streamText, tool } from "ai";
import OpenAI from "openai";
import { z } from "zod";

const baseURL = process.env.TOLLWAY_BASE_URL + "/v1";
const apiKey = process.env.TOLLWAY_API_KEY;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 30_000 });
const tollway = createOpenAICompatible({ name: "tollway", baseURL, apiKey, includeUsage: true, supportsStructuredOutputs: true });
// Each kind of upstream: Tollway's mock, OpenAI-compatible servers that put usage on a chunk
// with choices (a finish chunk, or every chunk as vLLM does), Anthropic and Gemini.
const CHAT_MODELS = ["gpt-4.1", "vllm-finish", "vllm-every", "claude", "gemini"];
const WEATHER = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather in a given location",
    parameters: {
      $schema: "http://json-schema.org/draft-07/schema#",
      type: "object",
      properties: { location: { type: "string" }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
      required: ["location"],
      additionalProperties: false,
    },
  },
};

test("openai-node: a stream with usage says the text once, and bills once", async () => {
  for (const model of CHAT_MODELS) {
    const messages = [{ role: "user", content: "Say something" }];
    const plain = await client.chat.completions.create({ model, messages });
    const stream = await client.chat.completions.create({ model, messages, stream: true, stream_options: { include_usage: true } });
    let text = "";
    const finishes = [];
    const usages = [];
    for await (const chunk of stream) {
      for (const choice of chunk.choices) {
        text += choice.delta.content ?? "";
        if (choice.finish_reason) finishes.push(choice.finish_reason);
      }
      if (chunk.usage) usages.push(chunk);
    }
    assert.equal(text, plain.choices[0].message.content, model);
    assert.equal(finishes.length, 1, model);
    assert.equal(usages.length, 1, `${model}: usage arrives once`);
    assert.deepEqual(usages[0].choices, [], model);
    assert.ok(usages[0].id && usages[0].created, `${model}: the usage chunk belongs to the stream`);
    assert.equal(usages[0].usage.completion_tokens, plain.usage.completion_tokens, model);
  }
});

test("openai-node: tools on translated providers, schemas and all", async () => {
  for (const model of ["claude", "gemini"]) {
    const reply = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Weather in San Francisco?" }],
      tools: [WEATHER],
    });
    const [call] = reply.choices[0].message.tool_calls;
    assert.equal(call.function.name, "get_weather", model);
    assert.equal(JSON.parse(call.function.arguments).location, "San Francisco, CA", model);
    assert.equal(reply.choices[0].finish_reason, "tool_calls", model);
    assert.equal(reply.choices[0].message.refusal, null, model);
  }
});

test("openai-node: embeddings (base64 by default, decoded by the SDK), models, errors", async () => {
  for (const model of ["gpt-embed", "gemini-embed"]) {
    const result = await client.embeddings.create({ model, input: ["one", "two"], dimensions: 8 });
    assert.equal(result.data.length, 2, model);
    assert.equal(result.data[0].embedding.length, 8, model);
    assert.ok(result.data[0].embedding.every((v) => typeof v === "number" && Math.abs(v) <= 1), model);
  }
  const models = await client.models.list();
  assert.ok(models.data.some((m) => m.id === "claude"));
  await assert.rejects(client.models.retrieve("no-such-model"), (error) => {
    assert.equal(error.status, 404);
    assert.equal(error.code, "model_not_found");
    return true;
  });
  await assert.rejects(
    client.chat.completions.create({ model: "claude", messages: [{ role: "user", content: "x" }], logit_bias: { 1: 5 } }),
    (error) => error.status === 400 && error.param === "logit_bias",
  );
});

test("AI SDK: generateText and streamText agree, usage included", async () => {
  for (const model of CHAT_MODELS) {
    const plain = await generateText({ model: tollway(model), prompt: "Say something", maxRetries: 0 });
    const streamed = streamText({ model: tollway(model), prompt: "Say something", maxRetries: 0 });
    let text = "";
    for await (const delta of streamed.textStream) text += delta;
    assert.equal(text, plain.text, model);
    const usage = await streamed.usage;
    assert.equal(usage.outputTokens, plain.usage.outputTokens, model);
    assert.equal(await streamed.finishReason, "stop", model);
  }
});

test("AI SDK: zod tools on Gemini and Anthropic", async () => {
  for (const model of ["gemini", "claude"]) {
    const result = await generateText({
      model: tollway(model),
      prompt: "Weather in San Francisco?",
      tools: {
        get_weather: tool({
          description: "Get the current weather in a given location",
          inputSchema: z.object({ location: z.string(), unit: z.enum(["celsius", "fahrenheit"]).optional() }),
        }),
      },
      maxRetries: 0,
    });
    assert.equal(result.toolCalls[0].toolName, "get_weather", model);
    assert.equal(result.toolCalls[0].input.location, "San Francisco, CA", model);
  }
});

test("AI SDK: structured output on Anthropic is enforced and parsed", async () => {
  const { object } = await generateObject({
    model: tollway("claude"),
    schema: jsonSchema({
      type: "object",
      properties: { answer: { type: "string" } },
      required: ["answer"],
      additionalProperties: false,
    }),
    prompt: "Capital of France?",
    maxRetries: 0,
  });
  assert.deepEqual(object, { answer: "Paris" });
});
