package store

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// abortTimeout bounds the clean-up of a failed multipart upload, which
// runs even when the caller's context is done.
const abortTimeout = 30 * time.Second

// putMultipart uploads data as a multipart upload of part-size parts,
// sent in parallel within the store's concurrency bound. On any failure
// the upload is aborted, so no parts are left behind (nor billed).
func (s *S3Store) putMultipart(ctx context.Context, key string, data []byte) (err error) {
	var uploadID string
	err = s.do(ctx, opPut, "CreateMultipartUpload", key, func(ctx context.Context) error {
		out, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
			Bucket: aws.String(s.cfg.bucket),
			Key:    aws.String(key),
		})
		if err != nil {
			return err
		}
		uploadID = aws.ToString(out.UploadId)
		if uploadID == "" {
			return fmt.Errorf("server returned no upload id")
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.abortMultipart(context.WithoutCancel(ctx), key, uploadID)
		}
	}()

	parts, err := s.uploadParts(ctx, key, uploadID, data)
	if err != nil {
		return err
	}
	attempt := 0
	return s.do(ctx, opPut, "CompleteMultipartUpload", key, func(ctx context.Context) error {
		attempt++
		_, err := s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket:          aws.String(s.cfg.bucket),
			Key:             aws.String(key),
			UploadId:        aws.String(uploadID),
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		})
		if err != nil && attempt > 1 && errorCode(err) == "NoSuchUpload" {
			// An earlier attempt completed the upload but its answer was
			// lost: the object is there if it has the right size.
			head, herr := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.cfg.bucket), Key: aws.String(key)})
			if herr == nil && aws.ToInt64(head.ContentLength) == int64(len(data)) {
				return nil
			}
		}
		return err
	})
}

// uploadParts uploads the parts of data concurrently and returns them in
// order for CompleteMultipartUpload. The first failure cancels the rest.
func (s *S3Store) uploadParts(ctx context.Context, key, uploadID string, data []byte) ([]types.CompletedPart, error) {
	size := s.cfg.partSize
	count := (int64(len(data)) + size - 1) / size
	if count > 10000 {
		return nil, fmt.Errorf("%d bytes need %d parts of %d bytes, more than S3's 10000: raise part-size", len(data), count, size)
	}
	parts := make([]types.CompletedPart, count)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for i := range count {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lo, hi := i*size, min((i+1)*size, int64(len(data)))
			num := int32(i + 1)
			err := s.do(ctx, opPut, fmt.Sprintf("UploadPart %d/%d of", num, count), key, func(ctx context.Context) error {
				out, err := s.client.UploadPart(ctx, &s3.UploadPartInput{
					Bucket:        aws.String(s.cfg.bucket),
					Key:           aws.String(key),
					UploadId:      aws.String(uploadID),
					PartNumber:    aws.Int32(num),
					Body:          bytes.NewReader(data[lo:hi]),
					ContentLength: aws.Int64(hi - lo),
				})
				if err != nil {
					return err
				}
				if aws.ToString(out.ETag) == "" {
					return fmt.Errorf("server returned no ETag for part %d", num)
				}
				parts[i] = types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)}
				return nil
			})
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return parts, nil
}

// abortMultipart abandons an upload; a failure only leaves parts for the
// bucket's lifecycle rules, so it is logged, not returned.
func (s *S3Store) abortMultipart(ctx context.Context, key, uploadID string) {
	ctx, cancel := context.WithTimeout(ctx, abortTimeout)
	defer cancel()
	err := s.do(ctx, opPut, "AbortMultipartUpload", key, func(ctx context.Context) error {
		_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
			Bucket:   aws.String(s.cfg.bucket),
			Key:      aws.String(key),
			UploadId: aws.String(uploadID),
		})
		return err
	})
	if err != nil && errorCode(err) != "NoSuchUpload" {
		s.log.Warn("aborting a failed multipart upload failed; its parts stay until the bucket's lifecycle rules remove them",
			"key", key, "upload_id", uploadID, "err", err)
	}
}
