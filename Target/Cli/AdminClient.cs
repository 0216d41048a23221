using System.Net;
using System.Net.Http.Json;
using System.Text.Json;

namespace Target.Cli;

/// <summary>The admin API as the CLI's client verbs use it. Errors become <see cref="AdminClientException"/>.</summary>
public sealed class AdminClient : IDisposable
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);

    private readonly HttpClient _http;
    private readonly string _address;

    public AdminClient(string address)
    {
        IPEndPoint endPoint = EndpointParser.Parse(address);
        _address = endPoint.ToString();
        _http = new HttpClient { BaseAddress = new Uri($"http://{_address}/"), Timeout = s_timeout };
    }

    public Task<JsonDocument> GetAsync(string path, CancellationToken ct) => SendAsync(HttpMethod.Get, path, null, ct);

    public Task<JsonDocument> PostAsync(string path, object body, CancellationToken ct) => SendAsync(HttpMethod.Post, path, body, ct);

    public Task<JsonDocument> DeleteAsync(string path, CancellationToken ct) => SendAsync(HttpMethod.Delete, path, null, ct);

    private async Task<JsonDocument> SendAsync(HttpMethod method, string path, object? body, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is not null)
            request.Content = JsonContent.Create(body, options: new JsonSerializerOptions(JsonSerializerDefaults.Web));

        HttpResponseMessage response;
        try
        {
            response = await _http.SendAsync(request, ct).ConfigureAwait(false);
        }
        catch (HttpRequestException e)
        {
            throw new AdminClientException($"cannot reach the admin API at {_address}: {e.Message}", unreachable: true);
        }
        catch (TaskCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new AdminClientException($"the admin API at {_address} did not answer within {s_timeout.TotalSeconds} s", unreachable: true);
        }

        using (response)
        {
            string text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                string message = text;
                try
                {
                    using JsonDocument error = JsonDocument.Parse(text);
                    if (error.RootElement.ValueKind == JsonValueKind.Object && error.RootElement.TryGetProperty("error", out JsonElement e))
                        message = e.GetString() ?? text;
                }
                catch (JsonException)
                {
                }
                throw new AdminClientException($"{(int)response.StatusCode} {response.ReasonPhrase}: {message}", unreachable: false);
            }
            return JsonDocument.Parse(text.Length == 0 ? "null" : text);
        }
    }

    public void Dispose() => _http.Dispose();
}

public sealed class AdminClientException(string message, bool unreachable) : Exception(message)
{
    public bool Unreachable { get; } = unreachable;
}
