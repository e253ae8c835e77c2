-- What the catalogue says of each movie: its release year (from the title's "(YYYY)"), how
-- many genres it has and a flag per genre. Static facts: stamped at 1990-01-01, before any rating.
WITH movies_parsed AS (
    SELECT movieId, string_split(genres, '|') AS genre_list,
        TRY_CAST(regexp_extract(trim(title), '\((\d{4})\)$', 1) AS BIGINT) AS release_year
    FROM movies
)
SELECT movieId, TIMESTAMP '1990-01-01 00:00:00+00' AS event_timestamp,
    TIMESTAMP '1990-01-01 00:00:00+00' AS created_timestamp,
    release_year AS movie_release_year,
    array_length(list_filter(genre_list, lambda g: g <> '(no genres listed)'))::BIGINT AS movie_genres,
    list_contains(genre_list, 'Action')::BIGINT AS movie_genre_action,
    list_contains(genre_list, 'Adventure')::BIGINT AS movie_genre_adventure,
    list_contains(genre_list, 'Animation')::BIGINT AS movie_genre_animation,
    list_contains(genre_list, 'Children')::BIGINT AS movie_genre_children,
    list_contains(genre_list, 'Comedy')::BIGINT AS movie_genre_comedy,
    list_contains(genre_list, 'Crime')::BIGINT AS movie_genre_crime,
    list_contains(genre_list, 'Documentary')::BIGINT AS movie_genre_documentary,
    list_contains(genre_list, 'Drama')::BIGINT AS movie_genre_drama,
    list_contains(genre_list, 'Fantasy')::BIGINT AS movie_genre_fantasy,
    list_contains(genre_list, 'Film-Noir')::BIGINT AS movie_genre_film_noir,
    list_contains(genre_list, 'Horror')::BIGINT AS movie_genre_horror,
    list_contains(genre_list, 'IMAX')::BIGINT AS movie_genre_imax,
    list_contains(genre_list, 'Musical')::BIGINT AS movie_genre_musical,
    list_contains(genre_list, 'Mystery')::BIGINT AS movie_genre_mystery,
    list_contains(genre_list, 'Romance')::BIGINT AS movie_genre_romance,
    list_contains(genre_list, 'Sci-Fi')::BIGINT AS movie_genre_sci_fi,
    list_contains(genre_list, 'Thriller')::BIGINT AS movie_genre_thriller,
    list_contains(genre_list, 'War')::BIGINT AS movie_genre_war,
    list_contains(genre_list, 'Western')::BIGINT AS movie_genre_western
FROM movies_parsed
