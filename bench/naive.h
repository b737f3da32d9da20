/*
 * The context a user would write by hand without ctxvars: a hash map
 * behind a mutex, one current map per thread, copied in full on capture.
 * The mutex is there because capture happens from other threads (a pool
 * copies the submitter's context while the submitter keeps setting). It is
 * the baseline that shows what the persistent map buys: get and set are
 * cheap enough, copy is O(n).
 */
#ifndef CV_BENCH_NAIVE_H
#define CV_BENCH_NAIVE_H

#include <mutex>
#include <unordered_map>

namespace cvbench
{

class NaiveContext
{
  public:
    NaiveContext() = default;
    NaiveContext(const NaiveContext &other)
    {
        std::lock_guard<std::mutex> lock(other.mutex_);
        map_ = other.map_;
    }

    bool get(const void *key, void **out) const
    {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = map_.find(key);
        if (it == map_.end())
            return false;
        *out = it->second;
        return true;
    }

    /* The token of a set: what reset must put back. */
    struct Token {
        const void *key;
        void *old_value;
        bool had_old;
    };

    Token set(const void *key, void *value)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        auto [it, inserted] = map_.try_emplace(key, value);
        Token token{key, nullptr, !inserted};
        if (!inserted) {
            token.old_value = it->second;
            it->second = value;
        }
        return token;
    }

    void reset(const Token &token)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (token.had_old)
            map_[token.key] = token.old_value;
        else
            map_.erase(token.key);
    }

    size_t size() const
    {
        std::lock_guard<std::mutex> lock(mutex_);
        return map_.size();
    }

  private:
    mutable std::mutex mutex_;
    std::unordered_map<const void *, void *> map_;
};

} // namespace cvbench

#endif
